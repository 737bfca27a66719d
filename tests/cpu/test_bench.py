"""`ddpm-rt bench`: the suite's figures, the CLI outputs (table, --json, Markdown, PNG), the
DDIMPipeline suite on a tiny diffusers UNet, and the error paths."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from ddpm_rt.bench.report import text_report
from ddpm_rt.bench.suites import BenchConfig, run_suite
from ddpm_rt.bench.timing import RssSampler, TimedModel, summary
from ddpm_rt.commands.options import parse_list
from ddpm_rt.errors import ConfigError
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.sources import ModelSource, SourceKind
from ddpm_rt.spec import DiffusionSpec
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.helpers.bundles import export, make_source, write_manifest
from tests.helpers.sources import weights_key

FAST = BenchConfig(backends=("torch", "ort"), batches=(1, 2), warmup=1, repeat=2, threads=1)


@pytest.fixture(scope="module")
def swissroll(tmp_path_factory) -> ModelSource:
    return make_source("swissroll", tmp_path_factory.mktemp("swissroll"))


def test_suite_reports_every_figure(swissroll):
    plan = swissroll.spec.plan(swissroll.spec.sampler(6))
    result = run_suite(swissroll, plan, FAST)
    env = result["environment"]
    for key in ("cpu", "usable_cores", "python", "torch", "onnxruntime", "numpy", "threads", "date",
                "loadavg_start", "loadavg_end"):
        assert env.get(key) is not None, key
    assert result["config"]["threads"] == 1 and "RSS" in result["memory_method"]
    rows = {(r["backend"], r["batch"]): r for r in result["results"]}
    assert set(rows) == {("torch", 1), ("torch", 2), ("ort", 1), ("ort", 2)}
    for (name, batch), r in rows.items():
        assert r["e2e_s"]["n"] == 2 and r["e2e_s"]["median"] > 0
        assert r["step_ms"]["n"] == 2 * plan.steps and r["step_ms"]["p90"] >= r["step_ms"]["median"]
        assert r["call_ms"]["median"] <= r["step_ms"]["median"] * 1.5
        assert 0.0 <= r["outside_call_share"]["median"] < 1.0
        assert r["images_per_s"] == pytest.approx(batch / r["e2e_s"]["median"])
        assert r["rss_delta_mb"] >= 0 and r["finite"]
        if name == "torch":
            assert r["max_abs_diff_vs_baseline"] == 0.0 and r["speedup_vs_baseline"] == 1.0
        else:
            assert r["max_abs_diff_vs_baseline"] <= 1e-4 and r["speedup_vs_baseline"] > 0
            assert r["max_abs_diff_first_call"] <= 1e-5
            assert r["info"]["intra_op_threads"] == 1
        assert r["baseline_1ulp_sensitivity"] is not None and r["baseline_1ulp_sensitivity"] >= 0
    table = text_report(result)
    assert "images/s" in table and "outside call" in table and env["cpu"] in table


def test_timed_model_splits_call_and_step_time():
    def slow(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        time.sleep(0.002)
        return x

    timed = TimedModel(slow, 3)
    x, t = np.zeros(2, np.float32), np.zeros(2, np.float32)
    for _ in range(3):
        timed(x, t)
    end = time.perf_counter()
    calls, steps = timed.call_times(), timed.step_times(end)
    assert calls.shape == steps.shape == (3,)
    assert np.all(calls >= 0.0015) and np.all(steps >= calls - 1e-9)
    s = summary([1.0, 2.0, 3.0, 4.0], scale=1e3)
    assert s["median"] == 2500.0 and s["min"] == 1000.0 and s["n"] == 4
    with RssSampler() as mem:
        block = np.ones(8 << 20, np.uint8)  # 8 MiB touched
        time.sleep(0.02)
    assert mem.peak >= mem.start_rss and block.sum() > 0


def test_cli_bench_json_markdown_plot(tmp_path):
    out = tmp_path / "b"
    proc = run_cli("bench", "swissroll", "--steps", "4", "--batch", "1,2", "--repeat", "2",
                   "--warmup", "1", "--threads", "1", "--backends", "torch,ort", "--json",
                   "--markdown", f"{out}.md", "--plot", f"{out}.png", "--json-file", f"{out}.json",
                   env={"DDPM_RT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == json.loads((tmp_path / "b.json").read_text())
    assert [(r["backend"], r["batch"]) for r in result["results"]] == [
        ("torch", 1), ("ort", 1), ("torch", 2), ("ort", 2)]
    ort_rows = [r for r in result["results"] if r["backend"] == "ort"]
    assert all(r["max_abs_diff_vs_baseline"] <= 1e-4 for r in ort_rows)  # same weights on both
    md = (tmp_path / "b.md").read_text()
    assert "images/s" in md and "load average" in md and result["environment"]["cpu"] in md
    from PIL import Image

    assert Image.open(tmp_path / "b.png").size[0] > 400


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--plot", "x.jpg"], ["--plot", ".png"]),
        (["--batch", "0"], ["batch", ">= 1"]),
        (["--backends", "nope"], ["unknown backend", "torch"]),
        (["--repeat", "0"], ["--repeat"]),
        (["--backends", "ort-cuda"], ["onnxruntime-gpu"]),
    ],
)
def test_cli_bench_errors_are_one_line(tmp_path, args, needles):
    import onnxruntime as ort

    if "ort-cuda" in args and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA EP present")
    proc = run_cli("bench", "swissroll", "--steps", "2", *args, cwd=tmp_path,
                   env={"DDPM_RT_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, *needles)


def test_parse_list_and_config_errors():
    assert parse_list(" torch, ort ") == ("torch", "ort")
    assert parse_list("1,4,16", int) == (1, 4, 16)
    with pytest.raises(ConfigError, match="threads"):
        BenchConfig(threads=0)
    assert parse_list("1", int) == (1,)
    with pytest.raises(ConfigError, match="comma-separated"):
        parse_list("one", int)
    with pytest.raises(ConfigError, match="empty"):
        BenchConfig(backends=())


def test_ddim_pipeline_suite_on_a_tiny_diffusers_unet(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from ddpm_rt.bench.pipeline import run_pipeline_suite

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()

    class Denoiser(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.unet(x, t).sample

    module = Denoiser().eval()
    spec = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=1000), "epsilon", (3, 8, 8),
                         clip=(-1.0, 1.0))
    write_manifest(export(module, (3, 8, 8), tmp_path / "unet"), spec)
    src = ModelSource(SourceKind.MODULE, "test:tiny-unet", spec, weights_key(module), bundle=tmp_path / "unet",
                      load_module=lambda: module)
    plan = spec.plan(spec.sampler(8, sampler="ddim"))
    res = run_pipeline_suite(src, plan, BenchConfig(warmup=0, repeat=1, threads=1))
    rows = {r["runner"]: r for r in res["results"]}
    assert set(rows) == {"diffusers-ddim-pipeline", "torch", "ort"}
    assert rows["torch"]["max_abs_diff_vs_pipeline"] <= 1e-4  # the same DDIM math, step for step
    assert rows["ort"]["max_abs_diff_vs_pipeline"] <= 1e-3
    assert rows["diffusers-ddim-pipeline"]["speedup_vs_pipeline"] == 1.0
    with pytest.raises(ConfigError, match="DDIM"):
        run_pipeline_suite(src, spec.plan(spec.sampler(8, sampler="ddpm")), BenchConfig(threads=1))
