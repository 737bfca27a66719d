"""The sampler inside the graph (`ddpm-rt export-sampler`): fused step / full-loop graphs vs the Python loop."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ddpm_rt.errors import ConfigError, ExportError
from ddpm_rt.exporter import sampler_export as SE
from ddpm_rt.plan import SamplerSpec
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.spec import DiffusionSpec
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.helpers.graphs import tiny_denoiser

IMAGE = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=100), "epsilon", (1, 4, 4), clip=(-1.0, 1.0))
VECTOR = DiffusionSpec(ScheduleSpec(kind="cosine", num_train_timesteps=40), "epsilon", (2,))
MANIFEST = {"format": "test", "note": "carried verbatim"}


def _run_file(path, graph: str, plan, x_init, noise):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return SE.run_fused(sess, graph, plan, x_init, noise)


@pytest.mark.parametrize("spec", [IMAGE, VECTOR], ids=["image-clip", "vector"])
@pytest.mark.parametrize("sampler,graph", [
    (SamplerSpec("ddim", 12), "loop"),
    (SamplerSpec("ddim", 12), "step"),
    (SamplerSpec("ddim", 12, eta=1.0), "step"),
    (SamplerSpec("ddpm", 12), "step"),
    (SamplerSpec("ddpm", 7, spacing="linspace", variance_type="fixed_large"), "step"),
], ids=["ddim-loop", "ddim-step", "ddim-eta1-step", "ddpm-step", "ddpm-linspace-large-step"])
def test_fused_graph_matches_python_loop(tmp_path, rng, spec, sampler, graph):
    den = tiny_denoiser(spec.sample_shape)
    out = tmp_path / "s.onnx"
    res = SE.export_sampler_graph(den, MANIFEST, spec, sampler, out, graph=graph)
    assert res.graph == graph and res.max_abs_diff <= SE.TOLERANCE
    # independently of the export check: another batch size, fresh noise
    x = rng.standard_normal((5, *spec.sample_shape), dtype=np.float32)
    z = rng.standard_normal((res.plan.steps, 5, *spec.sample_shape), dtype=np.float32)
    fused = _run_file(out, graph, res.plan, x, z)
    ref = SE.reference_loop(den.SerializeToString(), res.plan, x, z)
    assert fused.shape == x.shape
    assert np.max(np.abs(fused - ref)) <= 1e-5
    if res.plan.stochastic:  # the noise really is used: other noise, other samples
        other = _run_file(out, graph, res.plan, x, z[::-1].copy())
        assert np.max(np.abs(other - fused)) > 1e-3


@pytest.mark.parametrize("spec,sampler", [
    (DiffusionSpec(ScheduleSpec(kind="interp", num_train_timesteps=6), "next_sample", (1, 4, 4)),
     SamplerSpec("direct", 6)),
    (DiffusionSpec(ScheduleSpec(kind="alpha_power", alpha=0.99, num_train_timesteps=50), "epsilon", (2,)),
     SamplerSpec("geometric", 10, step_scale=1.5)),
], ids=["direct", "geometric"])
def test_other_deterministic_samplers_get_a_full_loop(tmp_path, rng, spec, sampler):
    den = tiny_denoiser(spec.sample_shape, seed=3)
    res = SE.export_sampler_graph(den, MANIFEST, spec, sampler, tmp_path / "l.onnx")  # auto -> loop
    assert res.graph == "loop"
    x = rng.standard_normal((3, *spec.sample_shape), dtype=np.float32)
    fused = _run_file(tmp_path / "l.onnx", "loop", res.plan, x, None)
    ref = SE.reference_loop(den.SerializeToString(), res.plan, x, np.zeros((res.plan.steps, *x.shape), np.float32))
    assert np.max(np.abs(fused - ref)) <= 1e-5


def test_metadata_describes_the_graph(tmp_path):
    SE.export_sampler_graph(tiny_denoiser(IMAGE.sample_shape), MANIFEST, IMAGE, SamplerSpec("ddpm", 5),
                            tmp_path / "s.onnx")
    model = onnx.load(str(tmp_path / "s.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props[SE.METADATA_KEY]) == MANIFEST
    desc = json.loads(props[SE.SAMPLER_KEY])
    assert desc["graph"] == "step" and desc["sampler"] == "ddpm" and desc["steps"] == 5
    assert not desc["deterministic"] and desc["clip"] == [-1.0, 1.0]
    assert [(i["name"], i["dtype"], i["shape"]) for i in desc["inputs"]] == [
        ("x", "float32", ["batch", 1, 4, 4]), ("step", "int64", []), ("noise", "float32", ["batch", 1, 4, 4])]
    assert desc["outputs"][0]["name"] == "x_prev"
    assert desc["noise_steps"] == [0, 1, 2, 3]  # ddpm draws no noise at train step 0
    assert desc["verify"]["max_abs_diff"] <= SE.TOLERANCE
    # the graph's own inputs agree with the description
    assert [i.name for i in model.graph.input] == ["x", "step", "noise"]
    assert model.ir_version <= 10  # loadable by older ORT builds in hosts


def test_loop_body_holds_the_denoiser_weights(tmp_path):
    """Weights live in the Loop body (so ORT's CPU layout rewrite applies there); tables outside."""
    SE.export_sampler_graph(tiny_denoiser(IMAGE.sample_shape), MANIFEST, IMAGE, SamplerSpec("ddim", 6),
                            tmp_path / "l.onnx", "loop")
    model = onnx.load(str(tmp_path / "l.onnx"))
    assert [n.op_type for n in model.graph.node] == ["Shape", "Slice", "Loop"]  # B once, then the loop
    body = model.graph.node[-1].attribute[0].g
    assert "den/w" in {i.name for i in body.initializer}
    assert "plan/table" in {i.name for i in model.graph.initializer}
    assert [i.name for i in model.graph.input] == ["x_init"] and [o.name for o in model.graph.output] == ["x_0"]


def test_full_loop_refused_for_stochastic_plans(tmp_path):
    for sampler in (SamplerSpec("ddpm", 5), SamplerSpec("ddim", 5, eta=0.5)):
        with pytest.raises(ConfigError, match="deterministic.*--graph step"):
            SE.export_sampler_graph(tiny_denoiser((2,)), MANIFEST, VECTOR, sampler, tmp_path / "x.onnx", graph="loop")
    with pytest.raises(ConfigError, match="auto, step, loop"):
        SE.export_sampler_graph(tiny_denoiser((2,)), MANIFEST, VECTOR, SamplerSpec("ddim", 5),
                                tmp_path / "x.onnx", graph="fused")
    assert not (tmp_path / "x.onnx").exists()


def test_parity_failure_is_an_export_error_and_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "s.onnx"
    out.write_bytes(b"previous")
    real = SE.reference_loop
    monkeypatch.setattr(SE, "reference_loop", lambda *a, **k: real(*a, **k) + 1e-3)
    with pytest.raises(ExportError, match="differs from the Python loop by 0.001"):
        SE.export_sampler_graph(tiny_denoiser((2,)), MANIFEST, VECTOR, SamplerSpec("ddim", 4), out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["s.onnx"]  # no temp file left behind


def test_denoiser_off_contract_is_refused(tmp_path):
    den = tiny_denoiser((2,))
    den.graph.input[1].name = "timestep"
    with pytest.raises(ExportError, match=r"inputs \(x, t\)"):
        SE.export_sampler_graph(den, MANIFEST, VECTOR, SamplerSpec("ddim", 4), tmp_path / "s.onnx")
    old = tiny_denoiser((2,), opset=12)
    with pytest.raises(ExportError, match="opset 12.*>= 13"):
        SE.export_sampler_graph(old, MANIFEST, VECTOR, SamplerSpec("ddim", 4), tmp_path / "s.onnx")


# ---------------------------------------------------------------- the command, on a real bundle

@pytest.fixture(scope="module")
def swissroll_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "swissroll"
    proc = run_cli("export", "swissroll", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_cli_export_sampler(tmp_path, swissroll_bundle):
    out = tmp_path / "loop.onnx"
    proc = run_cli("export-sampler", str(swissroll_bundle), "--sampler", "ddim", "--steps", "10",
                   "--eta", "0", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["graph"] == "loop" and summary["steps"] == 10
    assert summary["max_abs_diff"] <= SE.TOLERANCE
    assert "max |fused - Python loop|" in proc.stderr
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["ddpm_rt"])["format"] == "ddpm-rt-bundle"
    assert json.loads(props["ddpm_rt_sampler"])["inputs"][0]["name"] == "x_init"


@pytest.mark.parametrize("args,needles", [
    (["--sampler", "ddpm", "--steps", "5", "--graph", "loop"], ["deterministic", "--graph step"]),
    (["--sampler", "geometric", "--steps", "5"], ["does not fit", "ddim"]),
])
def test_cli_bad_arguments_are_one_line_errors(tmp_path, swissroll_bundle, args, needles):
    proc = run_cli("export-sampler", str(swissroll_bundle), *args, "--out", str(tmp_path / "s.onnx"))
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2
    assert not (tmp_path / "s.onnx").exists()


def test_cli_bad_bundle_and_out(tmp_path):
    proc = run_cli("export-sampler", str(tmp_path / "nope"), "--out", str(tmp_path / "s.onnx"))
    assert_one_line_error(proc, "not found")
    proc = run_cli("export-sampler", str(tmp_path), "--out", str(tmp_path / "s.txt"))
    assert_one_line_error(proc, ".onnx")
    assert proc.returncode == 2
    SE.export_sampler_graph(tiny_denoiser((2,)), MANIFEST, VECTOR, SamplerSpec("ddim", 3), tmp_path / "g.onnx")
    proc = run_cli("export-sampler", str(tmp_path / "g.onnx"), "--out", str(tmp_path / "s.onnx"))
    assert_one_line_error(proc, "already a sampler graph")


MULTISTEP_CASES = [(s, spec) for s in ("dpmpp-2m", "dpmpp-3m", "unipc", "ipndm")
                   for spec in ((VECTOR,) if s == "ipndm" else (IMAGE, VECTOR))]  # ipndm does not clip


@pytest.mark.parametrize("graph", ["step", "loop"])
@pytest.mark.parametrize("name,spec", MULTISTEP_CASES,
                         ids=[f"{s}-{'image-clip' if sp is IMAGE else 'vector'}" for s, sp in MULTISTEP_CASES])
def test_multistep_fused_graphs_match_python_loop(tmp_path, rng, name, spec, graph):
    """History as step-graph inputs/outputs, or as Loop-carried state: same samples as the host ring."""
    den = tiny_denoiser(spec.sample_shape, seed=5)
    res = SE.export_sampler_graph(den, MANIFEST, spec, SamplerSpec(name, 9, "trailing"), tmp_path / "m.onnx", graph)
    assert res.plan.depth > 0 and res.max_abs_diff <= SE.TOLERANCE
    x = rng.standard_normal((3, *spec.sample_shape), dtype=np.float32)
    z = np.zeros((res.plan.steps, *x.shape), np.float32)
    fused = _run_file(tmp_path / "m.onnx", graph, res.plan, x, z)
    ref = SE.reference_loop(den.SerializeToString(), res.plan, x, z)
    assert np.max(np.abs(fused - ref)) <= 1e-5
    model = onnx.load(str(tmp_path / "m.onnx"))
    H = res.plan.depth
    if graph == "step":
        assert [i.name for i in model.graph.input] == ["x", "step", "noise", *(f"hist_{j}" for j in range(1, H + 1))]
        assert [o.name for o in model.graph.output] == ["x_prev", *(f"hist_{j}_next" for j in range(1, H + 1))]
        desc = json.loads({p.key: p.value for p in model.metadata_props}[SE.SAMPLER_KEY])
        assert desc["history"]["depth"] == H
        assert desc["history"]["carry"] == [{"output": f"hist_{j}_next", "input": f"hist_{j}", "init": "zeros"}
                                            for j in range(1, H + 1)]
        assert [i["name"] for i in desc["inputs"]] == [i.name for i in model.graph.input]
        assert [o["name"] for o in desc["outputs"]] == [o.name for o in model.graph.output]
    else:
        assert [i.name for i in model.graph.input] == ["x_init"] and [o.name for o in model.graph.output] == ["x_0"]
        loop = next(n for n in model.graph.node if n.op_type == "Loop")
        assert len(loop.input) == 3 + H  # trip count, cond, x_init, then the H history buffers


def test_multistep_history_is_used_by_the_step_graph(tmp_path, rng):
    """Feeding zeros as history instead of the previous outputs changes the sample."""
    den = tiny_denoiser(VECTOR.sample_shape, seed=5)
    res = SE.export_sampler_graph(den, MANIFEST, VECTOR, SamplerSpec("dpmpp-3m", 9, "trailing"), tmp_path / "m.onnx",
                                  "step")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x0 = rng.standard_normal((3, *VECTOR.sample_shape), dtype=np.float32)
    x = x0
    zeros = np.zeros_like(x0)
    for i in range(res.plan.steps):
        x = sess.run(["x_prev"], {"x": x, "step": np.array(i, np.int64), "noise": zeros,
                                  "hist_1": zeros, "hist_2": zeros})[0]
    good = _run_file(tmp_path / "m.onnx", "step", res.plan, x0, np.zeros((9, *x0.shape), np.float32))
    assert np.max(np.abs(x - good)) > 1e-3


def test_cli_out_of_range_steps_is_a_usage_error(tmp_path):
    """--steps is range-checked by click, as on `sample` (the options are shared): exit 2, usage text."""
    proc = run_cli("export-sampler", "swissroll", "--out", str(tmp_path / "s.onnx"), "--steps", "0")
    assert proc.returncode == 2 and "Invalid value for '--steps'" in proc.stderr and "Traceback" not in proc.stderr
