"""fp32 graph → fp16 graph with float32 I/O kept, for GPU backends.

Uses ONNX Runtime's copy of onnxconverter-common's float16 converter (shipped inside the
onnxruntime wheel, so no extra dependency) with:

* ``keep_io_types``: x, t and out stay float32 at the boundary (Casts are inserted);
* an op block list: normalisations, softmax and the reductions / powers they are
  built from stay fp32 (their sums of squares overflow or lose precision in fp16);
* a node block list: the whole timestep path (every node computed from `t` alone, e.g.
  t·freq → sin/cos → MLP) stays fp32, since t·freq reaches ~1e3 where fp16 spacing is 0.5.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import TYPE_CHECKING

from ddpm_rt.errors import ExportError

if TYPE_CHECKING:
    import onnx

FP32_OPS = [
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization",
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "Pow", "Sqrt",
    "Reciprocal", "Exp", "Log", "Sin", "Cos", "Range", "CumSum",
]


def time_path_nodes(model: onnx.ModelProto, t_name: str) -> list[str]:
    """Names of nodes whose every non-constant input derives from `t_name` only."""
    constant = {init.name for init in model.graph.initializer}
    derived = {t_name}
    names: list[str] = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant":
            constant.update(node.output)
            continue
        live = [i for i in node.input if i and i not in constant]
        if live and all(i in derived for i in live):
            derived.update(node.output)
            names.append(node.name)
    return names


def _topological(model: onnx.ModelProto) -> None:
    """Re-sort graph nodes in place (the converter appends its Casts at the end)."""
    nodes = list(model.graph.node)
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    ordered = []
    pending = nodes
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError("fp16 conversion produced a graph with a cycle or a dangling input")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def to_fp16(model: onnx.ModelProto, t_name: str = "t") -> onnx.ModelProto:
    """An fp16 copy of `model` with float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for i, node in enumerate(model.graph.node):  # the node block list needs names
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    keep = time_path_nodes(model, t_name)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            half = convert_float_to_float16(
                model, keep_io_types=True, op_block_list=FP32_OPS, node_block_list=keep,
                disable_shape_infer=False,
            )
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"fp16 conversion failed: {type(e).__name__}: {e}") from None
    _topological(half)
    return half
