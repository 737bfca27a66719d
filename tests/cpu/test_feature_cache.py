"""U-Net feature caching (DeepCache, issue #21): split export, plan column, host loop, ORT and OpenVINO.

The reference throughout is the *unmodified* eager U-Net with one forward pre-hook that swaps h at
the cut for the cached feature (`feature_split.patched_forward`); for DDIM the reference loop is
written here in torch from alphas_cumprod, sharing nothing with the plan.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.errors import BundleError, ConfigError, NonFiniteError
from ddpm_rt.exporter.export import ExportOptions, export_bundle
from ddpm_rt.models.feature_split import branches, patched_forward, split
from ddpm_rt.models.unet import UNet
from ddpm_rt.plan import cache_full_calls, with_feature_cache
from ddpm_rt.registry import open_backend
from ddpm_rt.runtime.backend import Backend, BackendOptions
from ddpm_rt.runtime.loop import initial_noise, sample_loop
from ddpm_rt.schedule import ScheduleSpec, alphas_cumprod
from ddpm_rt.spec import DiffusionSpec
from tests.cpu.test_node_host import node_host  # noqa: F401 - the installed Node host (skips without node/npm)
from tests.helpers.bundles import assert_nothing_written, call_main
from tests.helpers.sources import module_source
from tests.helpers.tiny import make_mlp

SPEC = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=1000), "epsilon", (1, 8, 8), clip=(-1.0, 1.0))
DIFF_SPEC = DiffusionSpec(ScheduleSpec(kind="cosine", num_train_timesteps=1000), "epsilon", (3, 8, 8))
QUIET = ExportOptions(trajectory_steps=0, feature_cache=0)


def _quiet(_: str) -> None:
    pass


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(in_channels=1, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(1,)).eval()


def tiny_diffusers() -> torch.nn.Module:
    import warnings

    warnings.simplefilter("ignore")
    from diffusers import UNet2DModel

    from ddpm_rt.sources.diffusers import _wrap

    torch.manual_seed(0)
    return _wrap(UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8).eval())


MODELS = {"unet": (tiny_unet, SPEC), "diffusers": (tiny_diffusers, DIFF_SPEC)}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    out = {}
    for name, (make, spec) in MODELS.items():
        module = make()
        path = tmp_path_factory.mktemp(name) / "bundle"
        export_bundle(module_source(module, spec), path, QUIET, _quiet)
        out[name] = (path, module)
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, torch.nn.Module, DiffusionSpec]:
    """The shipped (trained) digits U-Net with its cache graphs: trained trajectories are well
    conditioned, so graph-vs-eager differences stay at float32 level over a whole run (an untrained
    U-Net amplifies them ~1e3x through x0^ = x/sqrt(abar) - ... at high noise)."""
    from ddpm_rt.sources import resolve_source

    src = resolve_source("digits")
    path = tmp_path_factory.mktemp("digits") / "bundle"
    export_bundle(src, path, ExportOptions(trajectory_steps=0, feature_cache=0, verify=False), _quiet)
    return path, src.load_module().float().eval(), src.spec


@pytest.mark.parametrize("name", list(MODELS))
def test_split_equals_eager_and_the_patched_reference(name: str) -> None:
    make, spec = MODELS[name]
    module = make()
    for branch in range(branches(module)):
        full, shallow = split(module, branch)
        g = torch.Generator().manual_seed(branch)
        x = torch.randn((3, *spec.sample_shape), generator=g)
        x2 = x + 0.1 * torch.randn(x.shape, generator=g)
        t, t2 = torch.full((3,), 700.0), torch.full((3,), 650.0)
        with torch.no_grad():
            out, feat = full(x, t)
            torch.testing.assert_close(out, module(x, t), rtol=0, atol=1e-6)
            got = shallow(x2, t2, feat)
            with patched_forward(module, branch, feat):
                ref = module(x2, t2)
            plain = module(x2, t2)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
        assert (got - plain).abs().max() > 1e-3  # the cached feature matters: not the full forward


@pytest.mark.parametrize("name", list(MODELS))
def test_export_writes_both_graphs_verified(bundles, name: str) -> None:
    path, _ = bundles[name]
    manifest = json.loads((path / "ddpm_rt.json").read_text())
    fc = manifest["feature_cache"]
    assert fc["branch"] == 0 and fc["parity"]["shallow_out"] <= 1e-4 and fc["parity"]["full_out"] <= 1e-4
    assert 0 < fc["macs_per_sample"]["shallow"] < fc["macs_per_sample"]["full"] == manifest["graph"]["macs_per_sample"]
    graphs = load_bundle(path).feature_cache()
    assert graphs.full.is_file() and graphs.shallow.is_file() and graphs.feature_shape == tuple(fc["feature_shape"])
    from ddpm_rt.bundle.inspect import describe, format_text

    text = format_text(describe(path))
    assert "feature caching at branch 0" in text and f"({fc['macs_per_sample']['shallow'] / fc['macs_per_sample']['full']:.2f}x)" in text


def test_not_a_unet_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    spec = DiffusionSpec(ScheduleSpec(kind="cosine", num_train_timesteps=40), "epsilon", (2,))
    with pytest.raises(ConfigError, match="needs a U-Net") as e:
        export_bundle(module_source(make_mlp(), spec), tmp_path / "b", QUIET, _quiet)
    assert "\n" not in str(e.value)
    assert_nothing_written(tmp_path / "b")
    with pytest.raises(ConfigError, match="branches 0..2"):
        export_bundle(module_source(tiny_unet(), SPEC), tmp_path / "c", ExportOptions(feature_cache=3), _quiet)
    r = call_main(capsys, "export", "swissroll", "--out", str(tmp_path / "d"), "--feature-cache", "0")
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "U-Net" in r.stderr


def test_bundle_without_graphs_and_a_tampered_graph(bundles, tmp_path: Path) -> None:
    import shutil

    path, _ = bundles["unet"]
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    m = json.loads((copy / "ddpm_rt.json").read_text())
    (copy / "denoiser.cache_shallow.onnx").write_bytes(b"x" + (copy / "denoiser.cache_shallow.onnx").read_bytes())
    with pytest.raises(BundleError, match="modified after export"):
        load_bundle(copy).feature_cache()
    m.pop("feature_cache")
    (copy / "ddpm_rt.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="no feature-cache graphs"):
        load_bundle(copy).feature_cache()


def test_cache_schedules() -> None:
    assert cache_full_calls(10, 3).tolist() == [True, False, False] * 3 + [True]
    for n, k in ((50, 2), (50, 3), (50, 5), (15, 3), (7, 5)):
        q = cache_full_calls(n, k, "quadratic")
        assert q[0] and q.sum() == -(-n // k) == cache_full_calls(n, k).sum()
    with pytest.raises(ConfigError, match="uniform, quadratic"):
        cache_full_calls(10, 2, "cubic")
    plan = SPEC.plan(SPEC.sampler(20, sampler="ddim"))
    assert with_feature_cache(plan, 1).cached_calls == 0
    cached = with_feature_cache(plan, 4)
    assert cached.cached_calls == 15 and cached.model_calls == 20 and plan.cached_calls == 0


def _torch_ddim_reference(module: torch.nn.Module, branch: int, plan, x_init: np.ndarray,
                          spec: DiffusionSpec) -> np.ndarray:
    """DDIM (eta 0, clip x0^) in torch float32; the U-Net patched on cached rows."""
    acs = alphas_cumprod(spec.schedule)
    ts = plan.train_timesteps
    full_mod, _ = split(module, branch)
    x = torch.from_numpy(x_init.copy())
    feat = None
    lo, hi = spec.clip
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), float(t))
        with torch.no_grad():
            if plan.calls[i] == 1:
                eps, feat = full_mod(x, tt)
            else:
                with patched_forward(module, branch, feat):
                    eps = module(x, tt)
        a = float(acs[t])
        a_prev = float(acs[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        # Song et al. eq. 12 in float32 (as every runtime computes it), coefficients from float64
        cx, co = np.float32(1 / a ** 0.5), np.float32(-((1 - a) / a) ** 0.5)
        x0 = (float(cx) * x + float(co) * eps).clamp(lo, hi)
        x = float(np.float32(a_prev ** 0.5)) * x0 + float(np.float32((1 - a_prev) ** 0.5)) * eps
    return x.numpy()


@pytest.mark.parametrize(("interval", "schedule"), [(2, "uniform"), (3, "quadratic"), (5, "uniform")])
def test_cached_ddim_equals_the_patched_torch_loop(digits, interval: int, schedule: str) -> None:
    path, module, spec = digits
    plan = with_feature_cache(spec.plan(spec.sampler(50, sampler="ddim")), interval, schedule)
    x_init = initial_noise((4, *spec.sample_shape), np.random.default_rng(0))
    ref = _torch_ddim_reference(module, 0, plan, x_init, spec)
    with open_backend("ort", load_bundle(path), 4, BackendOptions(threads=1, feature_cache=True)) as be:
        got = be.sample(plan, x_init)
        uncached = be.sample(spec.plan(spec.sampler(50, sampler="ddim")), x_init)
    assert np.abs(got - ref).max() <= 1e-4
    assert np.abs(got - uncached).max() > 1e-3  # caching did something


def test_cached_multistep_equals_the_patched_torch_callables(digits) -> None:
    """The default solver (unipc): the plan's loop over eager torch (full, and patched on cached rows)."""
    path, module, spec = digits
    plan = with_feature_cache(spec.plan(spec.sampler()), 2)
    assert plan.sampler.sampler == "unipc" and plan.cached_calls > 0
    full_mod, _ = split(module, 0)
    state: dict[str, torch.Tensor] = {}

    def full(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out, state["feat"] = full_mod(torch.from_numpy(x), torch.from_numpy(t))
        return out.numpy()

    def cached(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.no_grad(), patched_forward(module, 0, state["feat"]):
            return module(torch.from_numpy(x), torch.from_numpy(t)).numpy()

    x_init = initial_noise((2, *spec.sample_shape), np.random.default_rng(1))
    ref = sample_loop(full, plan, x_init, shallow=cached)
    with open_backend("ort", load_bundle(path), 2, BackendOptions(threads=1, feature_cache=True)) as be:
        got = be.sample(plan, x_init)
    assert np.abs(got - ref).max() <= 1e-4


class _Sessions:
    """The two cache graphs as plain `session.run` callables: the reference Python loop."""

    def __init__(self, bundle) -> None:
        import onnxruntime as ort

        g = bundle.feature_cache()
        self.full = ort.InferenceSession(str(g.full), providers=["CPUExecutionProvider"])
        self.shallow = ort.InferenceSession(str(g.shallow), providers=["CPUExecutionProvider"])
        self.feat = None

    def __call__(self, x, t):
        out, self.feat = self.full.run(None, {"x": x, "t": t})
        return out

    def cached(self, x, t):
        return self.shallow.run(None, {"x": x, "t": t, "feature": self.feat})[0]


@pytest.mark.parametrize("backend", ["ort", "openvino"])
@pytest.mark.parametrize("sampler", ["ddim", "unipc", "ddpm"])
def test_backends_equal_the_python_loop(digits, backend: str, sampler: str) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    path, _, spec = digits
    bundle = load_bundle(path)
    plan = with_feature_cache(spec.plan(spec.sampler(15, sampler=sampler)), 3, "quadratic")
    rng = np.random.default_rng(2)
    x_init = initial_noise((4, *spec.sample_shape), rng)
    noise = rng.standard_normal((plan.steps, 4, *spec.sample_shape), dtype=np.float32)
    ref_model = _Sessions(bundle)
    ref = sample_loop(ref_model, plan, x_init, noise=noise, shallow=ref_model.cached)
    with open_backend(backend, bundle, 4, BackendOptions(threads=1, feature_cache=True)) as be:
        got = be.sample(plan, x_init, noise=noise)
    assert np.abs(got - ref).max() <= 1e-5


def test_no_allocation_per_step(bundles) -> None:
    path, _ = bundles["unet"]
    x_init = initial_noise((64, *SPEC.sample_shape), np.random.default_rng(0))
    plans = {n: with_feature_cache(SPEC.plan(SPEC.sampler(n, sampler="ddim")), 3) for n in (6, 60)}
    with open_backend("ort", load_bundle(path), 64, BackendOptions(threads=1, feature_cache=True)) as be:
        for plan in plans.values():
            be.sample(plan, x_init)
        peaks = {}
        for n, plan in plans.items():
            tracemalloc.start()
            be.sample(plan, x_init)
            peaks[n] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peaks[60] <= peaks[6] + 4096, peaks  # one [64, 1, 8, 8] array is 16 KiB


class _NanShallow(Backend):
    name = "fake"

    def __call__(self, x, t):
        return np.zeros_like(x)

    def cached(self, x, t):
        return np.full_like(x, np.nan)


def test_the_nonfinite_guard_covers_cached_rows() -> None:
    plan = with_feature_cache(SPEC.plan(SPEC.sampler(10, sampler="ddim")), 2)
    with pytest.raises(NonFiniteError, match="step 2 of 10"):
        _NanShallow().sample(plan, np.zeros((1, *SPEC.sample_shape), np.float32))
    with pytest.raises(ConfigError, match="no shallow model"):
        sample_loop(lambda x, t: x, plan, np.zeros((1, *SPEC.sample_shape), np.float32))


def test_export_records_a_measured_recommendation(bundles) -> None:
    fc = json.loads((bundles["unet"][0] / "ddpm_rt.json").read_text())["feature_cache"]
    rec = fc["recommendation"]
    assert (rec["sampler"], rec["steps"]) == ("ddim", 50) and set(rec["rel_rms"]) == {"2", "3", "5"}
    within = [int(n) for n, e in rec["rel_rms"].items() if e <= rec["threshold"]]
    assert fc["recommended_interval"] == (max(within) if within else None)


def test_cli_sample_with_cache_interval(bundles, digits, tmp_path: Path, capsys) -> None:
    import shutil

    path, _ = bundles["unet"]
    out = tmp_path / "s.npy"
    r = call_main(capsys, "sample", str(path), "--backend", "ort", "--batch", "2", "--steps", "10", "--sampler",
                  "ddim", "--cache-interval", "2", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["cached_calls"] == 5 and summary["cache"] == {"interval": 2, "schedule": "uniform"}
    rec = tmp_path / "recommended"  # the manifest JSON is not hashed: a recommendation can be set by hand
    shutil.copytree(path, rec)
    m = json.loads((rec / "ddpm_rt.json").read_text())
    m["feature_cache"]["recommended_interval"] = 3
    (rec / "ddpm_rt.json").write_text(json.dumps(m))
    r = call_main(capsys, "sample", str(rec), "--backend", "ort", "--batch", "2", "--steps", "10", "--sampler",
                  "ddim", "--cache-interval", "auto", "--out", str(out), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["cache"]["interval"] == 3, r.stderr
    for source, bad, msg in ((path, "0", ">= 1"), (digits[0], "auto", "no recommended"),  # exported unverified
                             ("digits", "2", "no feature-cache graphs")):  # the shipped bundle has none
        r = call_main(capsys, "sample", str(source), "--batch", "2", "--steps", "10", "--out", str(out),
                      "--backend", "ort", "--cache-interval", bad)
        assert r.returncode != 0 and msg in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


@pytest.fixture(scope="module")
def fused(digits, tmp_path_factory) -> dict:
    """Full-loop sampler graphs of the digits bundle with feature caching (both branches in the Loop body)."""
    from ddpm_rt.exporter.sampler_export import export_sampler_graph, load_denoiser
    from ddpm_rt.exporter.sampler_graph import CacheGraphs
    from ddpm_rt.plan import SamplerSpec

    root = tmp_path_factory.mktemp("fused")
    b = load_bundle(digits[0])
    g = b.feature_cache()
    cache = CacheGraphs(load_denoiser(g.full), load_denoiser(g.shallow), g.feature_name, g.feature_shape)
    out = {"root": root, "bundle": b}
    for name, sampler, interval, schedule in (("ddim", SamplerSpec("ddim", 20), 3, "uniform"),
                                              ("unipc", SamplerSpec("unipc", 15), 2, "quadratic")):
        out[name] = export_sampler_graph(load_denoiser(b.onnx_path), b.manifest, b.spec, sampler,
                                         root / f"{name}.onnx", "auto", cache=(cache, interval, schedule))
    np.save(root / "x_init.npy", initial_noise((3, *b.spec.sample_shape), np.random.default_rng(3)))
    return out


@pytest.mark.parametrize("name", ["ddim", "unipc"])
def test_fused_loop_graph_runs_both_branches(fused, name: str) -> None:
    import onnxruntime as ort

    res = fused[name]
    assert res.graph == "loop" and res.max_abs_diff <= 1e-5 and res.plan.cached_calls > 0
    assert res.description["feature_cache"]["interval"] in (2, 3)
    x_init = np.load(fused["root"] / "x_init.npy")
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    got = sess.run(["x_0"], {"x_init": x_init})[0]
    with open_backend("ort", fused["bundle"], 3, BackendOptions(threads=1, feature_cache=True)) as be:
        host = be.sample(res.plan, x_init)
        uncached = be.sample(fused["bundle"].spec.plan(res.plan.sampler), x_init)
    assert np.abs(got - host).max() <= 1e-5
    assert np.abs(got - uncached).max() > 1e-3  # the graph really ran the shallow branch


def test_fused_graph_refusals(digits) -> None:
    from ddpm_rt.exporter.sampler_export import export_sampler_graph, load_denoiser
    from ddpm_rt.exporter.sampler_graph import CacheGraphs
    from ddpm_rt.plan import SamplerSpec

    b = load_bundle(digits[0])
    g = b.feature_cache()
    cache = (CacheGraphs(load_denoiser(g.full), load_denoiser(g.shallow), g.feature_name, g.feature_shape), 2,
             "uniform")
    for sampler, graph in ((SamplerSpec("ddim", 10), "step"), (SamplerSpec("ddpm", 10), "auto")):
        with pytest.raises(ConfigError, match="full-loop graph"):
            export_sampler_graph(load_denoiser(b.onnx_path), b.manifest, b.spec, sampler, Path("/nonexistent.onnx"),
                                 graph, cache=cache)


def test_node_host_runs_the_cached_loop_graph(node_host, fused, tmp_path: Path) -> None:  # noqa: F811
    import subprocess

    res = fused["unipc"]
    x_init = np.load(fused["root"] / "x_init.npy")
    proc = subprocess.run(["node", str(node_host), "--model", str(res.path), "--x-init",
                           str(fused["root"] / "x_init.npy"), "--out", str(tmp_path / "o.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open_backend("ort", fused["bundle"], 3, BackendOptions(threads=1, feature_cache=True)) as be:
        ref = be.sample(res.plan, x_init)
    assert np.abs(np.load(tmp_path / "o.npy") - ref).max() <= 1e-5


@pytest.mark.parametrize("sampler", ["ddim", "unipc", "ddpm"])
def test_device_loop_runs_cached_rows(sampler: str) -> None:
    """The device loop (on the CPU here) with the shallow call on cached rows, one static feature
    buffer shared by the two calls, equals the host loop over the same torch calls."""
    from ddpm_rt.gpu.device_loop import DeviceLoop

    module = tiny_unet()
    full_mod, shallow_mod = split(module, 0)
    batch = 3
    with torch.no_grad():
        feat_shape = full_mod(torch.zeros(1, *SPEC.sample_shape), torch.zeros(1))[1].shape[1:]
    feat = torch.zeros((batch, *feat_shape))  # (B, C_f, H_f, W_f): the one static feature buffer

    def denoise(x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
        o, f = full_mod(x, t)
        out.copy_(o)
        feat.copy_(f)

    def shallow(x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(shallow_mod(x, t, feat))

    def host_full(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = torch.empty(x.shape)
        with torch.no_grad():
            denoise(torch.from_numpy(x), torch.from_numpy(t), out)
        return out.numpy()

    def host_shallow(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = torch.empty(x.shape)
        with torch.no_grad():
            shallow(torch.from_numpy(x), torch.from_numpy(t), out)
        return out.numpy()

    plan = with_feature_cache(SPEC.plan(SPEC.sampler(12, sampler=sampler)), 3, "quadratic")
    rng = np.random.default_rng(4)
    x_init = initial_noise((batch, *SPEC.sample_shape), rng)
    noise = rng.standard_normal((plan.steps, batch, *SPEC.sample_shape), dtype=np.float32)
    ref = sample_loop(host_full, plan, x_init, noise=noise, shallow=host_shallow)
    got = DeviceLoop(denoise, "cpu", shallow=shallow).sample(plan, x_init, noise=noise)
    # addcmul rounds once where numpy's update rounds twice; an untrained U-Net amplifies that
    # through x0^ = x/sqrt(abar) - ... (the uncached device loop differs from the host loop alike)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert np.abs(got - sample_loop(host_full, SPEC.plan(plan.sampler), x_init, noise=noise)).max() > 1e-3
    with pytest.raises(ConfigError, match="without the shallow call"):
        DeviceLoop(denoise, "cpu").sample(plan, x_init, noise=noise)


def test_torch_cuda_backend_runs_cached_rows_on_the_device_loop() -> None:
    """torch-cuda's wiring (split modules, one static feature buffer), run on the CPU device loop."""
    from ddpm_rt.exporter.feature_cache import split_modules
    from ddpm_rt.gpu.torch_cuda_backend import TorchCudaBackend

    module = tiny_unet()
    plan = with_feature_cache(SPEC.plan(SPEC.sampler(12, sampler="ddim")), 3)
    x_init = initial_noise((2, *SPEC.sample_shape), np.random.default_rng(5))
    full_mod, shallow_mod = split(module, 0)
    kept: dict[str, torch.Tensor] = {}

    def host_full(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out, kept["f"] = full_mod(torch.from_numpy(x), torch.from_numpy(t))
        return out.numpy()

    def host_shallow(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return shallow_mod(torch.from_numpy(x), torch.from_numpy(t), kept["f"]).numpy()

    ref = sample_loop(host_full, plan, x_init, shallow=host_shallow)
    be = TorchCudaBackend(module, device="cpu", cuda_graph=False, feature_split=split_modules(module, 0))
    np.testing.assert_allclose(be.sample(plan, x_init), ref, rtol=1e-4, atol=1e-4)
    plain = TorchCudaBackend(module, device="cpu", cuda_graph=False)
    with pytest.raises(ConfigError, match="does not run feature caching"):
        plain.sample(plan, x_init)
