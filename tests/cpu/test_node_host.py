"""The Node.js host (examples/node/sample.mjs) against the Python ORT loop, same noise, both graphs.

Installs examples/node with `npm ci` when node_modules is missing (with ONNXRUNTIME_NODE_INSTALL=skip:
the CPU binaries ship inside the npm package; only the CUDA add-on would come from elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ddpm_rt.exporter import sampler_export as SE
from ddpm_rt.plan import SamplerSpec
from tests.cli_helpers import run_cli

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"
STEPS = 20
BATCH = 3
TOL = 1e-5


@pytest.fixture(scope="module")
def node_host() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node / npm are not installed: the Node.js host cannot be tested here")
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=600,
            env={**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"},
        )
        assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
    return NODE_DIR / "sample.mjs"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits bundle (shipped weights, or the untrained U-Net) and its two sampler graphs."""
    from ddpm_rt.bundle.load import load_bundle
    from ddpm_rt.exporter.sampler_export import export_sampler_graph, load_denoiser

    root = tmp_path_factory.mktemp("digits")
    proc = run_cli("export", "digits", "--out", str(root / "bundle"), "--no-verify")
    assert proc.returncode == 0, proc.stderr
    b = load_bundle(root / "bundle")
    den = load_denoiser(b.onnx_path)
    out = {"bundle": b, "denoiser": den.SerializeToString(), "root": root}
    for graph, sampler in (("loop", SamplerSpec("ddim", STEPS)), ("step", SamplerSpec("ddpm", STEPS)),
                           ("ms-loop", SamplerSpec("unipc", STEPS)), ("ms-step", SamplerSpec("dpmpp-3m", STEPS))):
        kind = graph.removeprefix("ms-")
        res = export_sampler_graph(den, b.manifest, b.spec, sampler, root / f"{graph}.onnx", kind)
        out[graph] = res
    rng = np.random.default_rng(7)
    shape = b.spec.sample_shape
    np.save(root / "x_init.npy", rng.standard_normal((BATCH, *shape), dtype=np.float32))
    np.save(root / "noise.npy", rng.standard_normal((STEPS, BATCH, *shape), dtype=np.float32))
    return out


def _node(host: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(host), *args], capture_output=True, text=True, timeout=120)


def _sample(host: Path, digits, graph: str, out: Path, *extra: str) -> np.ndarray:
    root = digits["root"]
    args = ["--model", str(root / f"{graph}.onnx"), "--x-init", str(root / "x_init.npy"), "--out", str(out)]
    if graph.endswith("step"):
        args += ["--noise", str(root / "noise.npy")]
    proc = _node(host, *args, *extra)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["graph"] == graph.removeprefix("ms-") and summary["batch"] == BATCH
    return np.load(out)


@pytest.mark.parametrize("level", ["basic", "all"])
@pytest.mark.parametrize("graph", ["loop", "step", "ms-loop", "ms-step"])
def test_node_samples_equal_python_ort_loop(node_host, digits, tmp_path, graph, level):
    root = digits["root"]
    x_init, noise = np.load(root / "x_init.npy"), np.load(root / "noise.npy")
    got = _sample(node_host, digits, graph, tmp_path / "out.npy", "--opt-level", level)
    ref = SE.reference_loop(digits["denoiser"], digits[graph].plan, x_init, noise, level=level)
    assert got.shape == x_init.shape and got.dtype == np.float32
    assert np.max(np.abs(got - ref)) <= TOL


def test_node_step_range_resumes(node_host, digits, tmp_path):
    """--start/--stop: running steps 0..8 then 8..N equals one run over every step (and --repeat repeats it)."""
    root = digits["root"]
    full = _sample(node_host, digits, "step", tmp_path / "full.npy")
    assert np.array_equal(_sample(node_host, digits, "step", tmp_path / "again.npy", "--repeat", "2"), full)
    _sample(node_host, digits, "step", tmp_path / "half.npy", "--stop", "8")
    proc = _node(node_host, "--model", str(root / "step.onnx"), "--x-init", str(tmp_path / "half.npy"),
                 "--noise", str(root / "noise.npy"), "--start", "8", "--out", str(tmp_path / "rest.npy"))
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "rest.npy"), full)


def test_node_draws_its_own_noise(node_host, digits, tmp_path):
    proc = _node(node_host, "--model", str(digits["root"] / "step.onnx"), "--batch", "2", "--seed", "5",
                 "--out", str(tmp_path / "o.npy"))
    assert proc.returncode == 0, proc.stderr
    x = np.load(tmp_path / "o.npy")
    assert x.shape == (2, *digits["bundle"].spec.sample_shape) and np.all(np.isfinite(x))


def test_node_refuses_bad_input(node_host, digits, tmp_path):
    root = digits["root"]
    shape = digits["bundle"].spec.sample_shape
    np.save(tmp_path / "bad_shape.npy", np.zeros((BATCH, 1, 8, 8), np.float32))
    np.save(tmp_path / "f64.npy", np.zeros((BATCH, *shape), np.float64))
    np.save(tmp_path / "bad_noise.npy", np.zeros((STEPS - 1, BATCH, *shape), np.float32))
    x = str(root / "x_init.npy")
    step, loop = str(root / "step.onnx"), str(root / "loop.onnx")
    cases = [
        (["--model", loop, "--x-init", str(tmp_path / "bad_shape.npy")], "[batch, 1,16,16]"),
        (["--model", step, "--x-init", str(tmp_path / "f64.npy")], "float32"),
        (["--model", step, "--x-init", x, "--noise", str(tmp_path / "bad_noise.npy")], "--noise has shape"),
        (["--model", step, "--x-init", x, "--start", str(STEPS + 5)], f"--start must be an integer in [0, {STEPS}]"),
        (["--model", step, "--x-init", x, "--start", "4", "--stop", "4"], "must be < --stop"),
        (["--model", loop, "--x-init", x, "--stop", "3"], "full-loop graph always runs all"),
        (["--model", loop, "--x-init", x, "--noise", str(root / "noise.npy")], "takes no --noise"),
        (["--model", str(digits["bundle"].onnx_path), "--x-init", x], "no 'ddpm_rt_sampler' metadata"),
        (["--model", str(tmp_path / "missing.onnx"), "--x-init", x], "cannot read model"),
        (["--model", step, "--x-init", x, "--opt-level", "max"], "--opt-level must be one of"),
        (["--model", step, "--bogus", "1"], "unknown argument --bogus"),
    ]
    for args, needle in cases:
        proc = _node(node_host, *args, "--out", str(tmp_path / "never.npy"))
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, proc.stderr)
    assert not (tmp_path / "never.npy").exists()



def test_node_multistep_step_graph_cannot_resume(node_host, digits, tmp_path):
    """A multistep step graph's history lives inside one run: --start > 0 is refused."""
    proc = _node(node_host, "--model", str(digits["root"] / "ms-step.onnx"), "--x-init",
                 str(digits["root"] / "x_init.npy"), "--start", "3", "--out", str(tmp_path / "o.npy"))
    assert proc.returncode == 2 and "carries a history of past outputs" in proc.stderr, proc.stderr


def _tiny_graphs(root: Path) -> dict:
    """A guided, an edit and a guided edit graph of a tiny class-conditional denoiser (no torch)."""
    from ddpm_rt.conditioning import CondInput
    from ddpm_rt.schedule import ScheduleSpec
    from ddpm_rt.spec import DiffusionSpec
    from tests.helpers.graphs import tiny_denoiser

    labels = (CondInput("class_labels", "class", num_classes=3, null=3),)
    spec = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=100), "epsilon", (1, 4, 4),
                         clip=(-1.0, 1.0), conditioning=labels)
    den = tiny_denoiser(spec.sample_shape, num_classes=3)
    made = {}
    for name, sampler, graph, edit in (("guided-step", SamplerSpec("ddpm", 10), "step", False),
                                       ("guided-loop", SamplerSpec("unipc", 8), "loop", False),
                                       ("edit-step", SamplerSpec("dpmpp-2m", 10), "step", True),
                                       ("repaint-loop", SamplerSpec("ddim", 10, eta=1.0, repaint=(2, 2)), "loop", True)):
        made[name] = SE.export_sampler_graph(den, {}, spec, sampler, root / f"{name}.onnx", graph, edit=edit)
    return made


def test_node_runs_guided_and_edit_graphs(node_host, tmp_path):
    import onnxruntime as ort

    made = _tiny_graphs(tmp_path)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((BATCH, 1, 4, 4), dtype=np.float32)
    labels = np.array([0, 2, 3], np.int64)
    image = rng.uniform(-1, 1, (BATCH, 1, 4, 4)).astype(np.float32)
    mask = np.zeros((BATCH, 1, 4, 4), np.float32)
    mask[..., :2] = 1
    files = {"x": x, "labels": labels, "image": image, "mask": mask}
    for k, v in files.items():
        np.save(tmp_path / f"{k}.npy", v)
    for name, res in made.items():
        noise = rng.standard_normal((res.plan.steps, BATCH, 1, 4, 4), dtype=np.float32)
        np.save(tmp_path / "noise.npy", noise)
        start = 3 if name == "edit-step" else 0
        extras = {"class_labels": labels, "guidance_scale": np.array(2.5, np.float32),
                  "guidance_rescale": np.array(0.3, np.float32)}
        args = ["--model", str(res.path), "--x-init", str(tmp_path / "x.npy"), "--out", str(tmp_path / "o.npy"),
                "--labels", str(tmp_path / "labels.npy"), "--guidance", "2.5", "--guidance-rescale", "0.3"]
        if res.graph == "step" or name.startswith("repaint"):  # a plain full-loop graph takes no noise
            args += ["--noise", str(tmp_path / "noise.npy")]
        if name.startswith(("edit", "repaint")):
            extras.update(start=np.array(start, np.int64), image=image, mask=mask)
            args += ["--image", str(tmp_path / "image.npy"), "--mask", str(tmp_path / "mask.npy"), "--start", str(start)]
        proc = _node(node_host, *args)
        assert proc.returncode == 0, proc.stderr
        sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
        want = SE.run_fused(sess, res.graph, res.plan, x, noise, extras)
        got = np.load(tmp_path / "o.npy")
        assert np.max(np.abs(got - want)) <= TOL, name
        if "edit" in name or "repaint" in name:
            np.testing.assert_allclose(got[..., :2], image[..., :2], rtol=0, atol=1e-6)
    bad = _node(node_host, "--model", str(made["guided-step"].path), "--out", str(tmp_path / "b.npy"))
    assert bad.returncode == 2 and "give --labels" in bad.stderr
