"""Facts read off an ONNX graph with the `onnx` package: I/O, parameters, MACs, metadata.

Used by the exporter (to write the manifest) and by `inspect`; the runtime never needs it
(it checks I/O through its own session, `bundle.contract.check_io`).
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.bundle.contract import CONTRACT, GraphContract, TensorIO, check_io

if TYPE_CHECKING:
    import onnx

_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 11: "float64", 16: "bfloat16"}


def graph_io(model: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """{name: {"kind", "dtype", "shape"}} of the graph's inputs and outputs (symbolic dims as names)."""
    init = {i.name for i in model.graph.initializer}
    out: dict[str, dict[str, Any]] = {}
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            if v.name in init:
                continue
            tt = v.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            out[v.name] = {"kind": kind, "dtype": _DTYPES.get(tt.elem_type, str(tt.elem_type)), "shape": shape}
    return out


def check_model_io(model: onnx.ModelProto, sample_shape: tuple[int, ...], where: str,
                   contract: GraphContract = CONTRACT) -> int | None:
    """`contract.check_io` on an onnx ModelProto; returns its fixed batch (None = dynamic)."""
    io_ = graph_io(model)
    ins: dict[str, TensorIO] = {n: (v["dtype"], v["shape"]) for n, v in io_.items() if v["kind"] == "input"}
    outs: dict[str, TensorIO] = {n: (v["dtype"], v["shape"]) for n, v in io_.items() if v["kind"] == "output"}
    return check_io(ins, outs, sample_shape, where, contract)


def set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set (replace) one entry of the model's metadata_props."""
    for prop in list(model.metadata_props):
        if prop.key == key:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def get_metadata(model: onnx.ModelProto, key: str) -> str | None:
    for prop in model.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements in the graph's floating-point initializers (the weights)."""
    return int(sum(int(np.prod(init.dims)) for init in model.graph.initializer if init.data_type in (1, 10, 11, 16)))


def _dims(value_info) -> list[int] | None:
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]
    return None if any(d is None for d in dims) else dims


def macs_per_sample(model: onnx.ModelProto) -> int | None:
    """Multiply-accumulates of Conv / ConvTranspose / MatMul / Gemm at batch 1 (None if unknown).

    Shapes come from ONNX Runtime's symbolic shape inference (it follows the Shape → Reshape
    chains of attention blocks, which onnx's own inference leaves unknown) on a copy with the
    batch axis fixed to 1; element-wise ops are ignored.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in (*m.graph.input, *m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    del m.graph.value_info[:]
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with contextlib.redirect_stdout(io.StringIO()):
            m = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
    except Exception:  # noqa: BLE001 - fall back to onnx's inference
        try:
            m = onnx.shape_inference.infer_shapes(m, data_prop=True)
        except Exception:  # noqa: BLE001 - FLOPs are a nicety
            return None
    shapes: dict[str, list[int] | None] = {}
    for vi in (*m.graph.input, *m.graph.value_info, *m.graph.output):
        shapes[vi.name] = _dims(vi)
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in m.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        out = shapes.get(node.output[0])
        if a is None or b is None or out is None:
            return None
        if node.op_type == "Conv":  # W [Cout, Cin/g, kh, kw]: each output element costs Cin/g·kh·kw
            total += int(np.prod(out)) * int(np.prod(b[1:]))
        elif node.op_type == "ConvTranspose":  # W [Cin, Cout/g, kh, kw]: each input element fans out
            total += int(np.prod(a)) * int(np.prod(b[1:]))
        elif node.op_type == "MatMul":
            total += int(np.prod(out)) * a[-1]
        else:
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            total += int(np.prod(out)) * (a[0] if trans_a else a[-1])
    return total
