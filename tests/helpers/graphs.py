"""Hand-built denoiser graphs on the contract, for the sampler-graph tests (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_denoiser(sample_shape: tuple[int, ...], seed: int = 0, opset: int = 17,
                  num_classes: int | None = None) -> onnx.ModelProto:
    """out = tanh(W*x + sin(0.05·t) + bias [+ emb[class_labels]]): nonlinear in x, t (and the label)."""
    rng = np.random.default_rng(seed)
    image = len(sample_shape) == 3
    c = sample_shape[0]
    w = rng.standard_normal((c, c, 3, 3) if image else (c, c)).astype(np.float32) * 0.4
    t_shape = np.array([-1, 1, 1, 1] if image else [-1, 1], np.int64)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.05), "k"),
             numpy_helper.from_array(t_shape, "t_shape"),
             numpy_helper.from_array(rng.standard_normal(sample_shape).astype(np.float32) * 0.2, "bias")]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]) if image
        else helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["t", "k"], ["tk"]),
        helper.make_node("Sin", ["tk"], ["st"]),
        helper.make_node("Reshape", ["st", "t_shape"], ["st_b"]),
        helper.make_node("Add", ["h", "st_b"], ["h2"]),
        helper.make_node("Add", ["h2", "bias"], ["h3"]),
    ]
    io = lambda n, s, d=TensorProto.FLOAT: helper.make_tensor_value_info(n, d, s)  # noqa: E731
    inputs = [io("x", ["batch", *sample_shape]), io("t", ["batch"])]
    last = "h3"
    if num_classes is not None:  # one embedding row per class, the null label's included
        emb = rng.standard_normal((num_classes + 1, *sample_shape)).astype(np.float32) * 0.5
        inits.append(numpy_helper.from_array(emb, "emb"))
        nodes += [helper.make_node("Gather", ["emb", "class_labels"], ["e"], axis=0),
                  helper.make_node("Add", ["h3", "e"], ["h4"])]
        inputs.append(io("class_labels", ["batch"], TensorProto.INT64))
        last = "h4"
    nodes.append(helper.make_node("Tanh", [last], ["out"]))
    graph = helper.make_graph(nodes, "tiny", inputs, [io("out", ["batch", *sample_shape])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def tiny_bundle(directory, spec, seed: int = 0):
    """A loadable bundle (denoiser.onnx + manifest) of `tiny_denoiser` for `spec` (its class conditioning
    included, when it has one); no torch. Returns `bundle.load.Bundle`."""
    from pathlib import Path

    from ddpm_rt.bundle.contract import CONTRACT
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.bundle.manifest import MANIFEST_FILE, ONNX_FILE, build_manifest, dumps, with_hash
    from ddpm_rt.fsutil import file_sha256

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    classes = next((c.num_classes for c in spec.conditioning if c.kind == "class"), None)
    model = tiny_denoiser(tuple(spec.sample_shape), seed=seed, num_classes=classes)
    for node in model.graph.node:  # the attributes torch writes; onnxruntime-web's WebGPU Conv requires them
        if node.op_type == "Conv":
            node.attribute.extend([helper.make_attribute("dilations", [1, 1]),
                                   helper.make_attribute("strides", [1, 1]),
                                   helper.make_attribute("kernel_shape", [3, 3])])
    onnx.save(model, str(directory / ONNX_FILE))
    m = build_manifest(source={"kind": "module", "ref": "tests:tiny"}, spec=spec.to_dict(),
                       io=CONTRACT.for_spec(spec).to_dict(tuple(spec.sample_shape)), opset=17, precision="fp32",
                       graph={}, parity=None, exporter="torchscript", versions={})
    (directory / MANIFEST_FILE).write_text(dumps(with_hash(m, file_sha256(directory / ONNX_FILE))))
    return load_bundle(directory)
