"""The GPU self-check harness behind `ddpm-rt selfcheck`: engines, parity against eager, a benchmark table.

For each model (the built-in ones, with shipped weights where present, plus a
CIFAR-10-size diffusers UNet2DModel with random weights) it prepares the bundle,
builds TensorRT engines (batch 1..max, each precision), checks a trajectory of every
GPU path against eager PyTorch on the same GPU (same x_T, same noise), then times eager
vs torch-cuda vs torch-cuda + CUDA graph vs TensorRT vs TensorRT + CUDA graph at each
batch size. Timing and parity metrics are the bench's own (`bench.timing`, `bench.parity`).

"eager" is the straightforward port: the nn.Module on CUDA called from the host loop
(`runtime.loop.sample_loop`), x copied to the device and back every step.

Written against the torch CUDA and TensorRT 10 APIs; not run in this project's CI
or by its developers (no GPU was available).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.bench.parity import parity_metrics
from ddpm_rt.bench.timing import summary
from ddpm_rt.sources.source import ModelSource, SourceKind

CIFAR_NAME = "cifar10-unet"
# Relative RMS error of the final sample vs fp32 eager allowed per path precision.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "bf16": 1e-1}


def pinned_source(src: ModelSource) -> ModelSource:
    """`src` whose every load_module() returns a copy of ONE module: eager, torch-cuda and the
    exported bundle then share weights even for an untrained built-in (random init per build)."""
    if src.load_module is None:
        return src
    base = src.load_module()
    return replace(src, load_module=lambda: copy.deepcopy(base))


def cifar10_unet_source() -> ModelSource:
    """diffusers UNet2DModel at CIFAR-10 size (DDPM's 35.7M-parameter config), random weights."""
    from ddpm_rt.errors import ConfigError
    from ddpm_rt.schedule import ScheduleSpec
    from ddpm_rt.sources.source import content_key
    from ddpm_rt.spec import DiffusionSpec

    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"the {CIFAR_NAME} check needs diffusers: pip install 'ddpm-rt[diffusers]', "
            f"or leave it out with --models"
        ) from None

    def load():
        import torch
        from diffusers import UNet2DModel

        from ddpm_rt.models.ddpm_cifar10 import DDPM_CIFAR10_UNET
        from ddpm_rt.sources.diffusers import _wrap

        torch.manual_seed(0)  # the same random weights every time the module is built
        return _wrap(UNet2DModel(**DDPM_CIFAR10_UNET).float().eval())

    from ddpm_rt.models.ddpm_cifar10 import DDPM_CIFAR10_SCHEDULER as S

    spec = DiffusionSpec(
        schedule=ScheduleSpec(kind=S["beta_schedule"], num_train_timesteps=S["num_train_timesteps"],
                              beta_start=S["beta_start"], beta_end=S["beta_end"]),
        prediction_type="epsilon",
        sample_shape=(3, 32, 32),
        clip=(-1.0, 1.0),
    )
    key = content_key({"selfcheck": CIFAR_NAME, "seed": 0, "spec": spec.to_dict()})
    return ModelSource(SourceKind.MODULE, f"selfcheck-{CIFAR_NAME}", spec, key, load_module=load, untrained=True)


def _time(fn, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median / spread of `fn()` in ms, bracketed by device syncs, after `warmup` untimed calls."""
    import torch

    for _ in range(warmup):  # the first call of a graph path also captures
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()  # returns host numpy: ends with a device sync
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return summary(times, 1e3)


def _check_model(
    name: str,
    src: ModelSource,
    *,
    steps: int,
    batches: list[int],
    precisions: list[str],
    repeats: int,
    opt_level: int,
    cache_dir: Path | None,
    log,
) -> dict[str, Any]:
    import torch

    from ddpm_rt.gpu.torch_cuda_backend import TorchCudaBackend
    from ddpm_rt.gpu.trt_backend import TrtBackend, TrtEngine
    from ddpm_rt.gpu.trt_build import BuildConfig, ensure_engine
    from ddpm_rt.prepare import bundle_for
    from ddpm_rt.runtime.loop import sample_loop

    spec = src.spec
    plan = spec.plan(spec.sampler(None if spec.schedule.family == "interp" else steps))
    one_step = plan.head(1)
    max_b = max(batches)
    log(f"[{name}] export bundle")
    bundle = bundle_for(src, cache_dir).directory
    engines = {}
    for p in precisions:
        log(f"[{name}] engine {p}, batch 1..{max_b}")
        rec = ensure_engine(
            bundle, BuildConfig(precision=p, min_batch=1, opt_batch=max_b, max_batch=max_b, opt_level=opt_level),
            cache_dir=cache_dir, log=log,
        )
        engines[p] = rec.plan_path

    assert src.load_module is not None
    eager = TorchCudaBackend(src.load_module(), precision="fp32", cuda_graph=False)
    paths: dict[str, Any] = {
        "torch-cuda": TorchCudaBackend(src.load_module(), cuda_graph=False),
        "torch-cuda-graph": TorchCudaBackend(src.load_module(), cuda_graph=True),
    }
    for p in precisions:
        paths[f"trt-{p}"] = TrtBackend(TrtEngine(engines[p]), cuda_graph=False)
        paths[f"trt-{p}-graph"] = TrtBackend(TrtEngine(engines[p]), cuda_graph=True)

    result: dict[str, Any] = {"model": name, "source": src.label, "untrained": src.untrained,
                              "sampler": plan.sampler.sampler, "steps": plan.steps,
                              "sample_shape": list(spec.sample_shape), "parity": {}, "bench": {},
                              "eager_1ulp_rel_rms": {}}
    rng = np.random.default_rng(0)
    for batch in batches:
        shape = (batch, *spec.sample_shape)
        x_init = rng.standard_normal(shape, dtype=np.float32)
        noise = rng.standard_normal((plan.steps, *shape), dtype=np.float32)

        def run_eager(x_init=x_init, noise=noise):
            return sample_loop(eager, plan, x_init, noise=noise)

        ref = run_eager()
        # How much fp32 rounding alone moves this trajectory: eager from x_T nudged by 1 ulp. A
        # random-weight network is chaotic (~0.5 relative), a trained one contracts (~1e-6), so
        # the trajectory tolerance is widened to twice this; one step (one call) is not chaotic
        # and keeps the fixed tolerance, which is what catches a wrong engine on such a model.
        nudged = sample_loop(eager, plan, np.nextafter(x_init, np.float32(np.inf)), noise=noise)
        sensitivity = parity_metrics(nudged, ref)["rel_rms"]
        ref_one = sample_loop(eager, one_step, x_init, noise=noise[:1])
        result["eager_1ulp_rel_rms"][str(batch)] = sensitivity
        parity = {}
        for label, be in paths.items():
            precision = label.split("-")[1] if label.startswith("trt-") else "fp32"
            m = parity_metrics(be.sample(plan, x_init, noise=noise), ref)
            one = parity_metrics(be.sample(one_step, x_init, noise=noise[:1]), ref_one)
            m["one_step_rel_rms"] = one["rel_rms"]
            m["tolerance_rel_rms"] = max(TOLERANCE[precision], 2.0 * sensitivity)
            m["ok"] = (m["finite"] and one["finite"] and m["rel_rms"] <= m["tolerance_rel_rms"]
                       and one["rel_rms"] <= TOLERANCE[precision])
            parity[label] = m
            log(f"[{name}] b={batch} {label}: rel_rms {m['rel_rms']:.2e} (1 step {one['rel_rms']:.2e}) "
                f"max_abs {m['max_abs']:.2e} {'ok' if m['ok'] else 'FAIL'}")
        result["parity"][str(batch)] = parity

        bench = {"eager": _time(run_eager, repeats)}
        for label, be in paths.items():
            bench[label] = _time(
                lambda be=be, x_init=x_init, noise=noise: be.sample(plan, x_init, noise=noise), repeats
            )
        base = bench["eager"]["median"]
        for v in bench.values():
            v["speedup_vs_eager"] = round(base / v["median"], 2) if v["median"] > 0 else None
        result["bench"][str(batch)] = bench
        log(f"[{name}] b={batch} " + ", ".join(f"{k} {v['median']:.1f}ms" for k, v in bench.items()))

    for be in (eager, *paths.values()):
        be.close()
    torch.cuda.empty_cache()
    return result


def render_markdown(report: dict[str, Any]) -> str:
    """The benchmark and parity tables as Markdown."""
    env = report["environment"]
    gpu = ", ".join(d["name"] for d in env["torch"].get("devices", [])) or "?"
    lines = [
        "# ddpm-rt GPU self-check",
        "",
        f"GPU {gpu} · torch {env['torch'].get('version')} (CUDA {env['torch'].get('cuda_build')}) · "
        f"TensorRT {env['tensorrt'].get('version')} · python {env['python']} · {report['date']}",
        "",
        f"Whole reverse loop, median of {report['repeats']} runs after warm-up (p10–p90), ms; "
        "speed-up against eager (nn.Module on CUDA driven by the host loop).",
        "",
    ]
    for r in report["models"]:
        labels = list(next(iter(r["bench"].values())).keys())
        lines += [
            f"## {r['model']} ({r['sampler']}, {r['steps']} steps, sample {tuple(r['sample_shape'])}"
            f"{', untrained' if r['untrained'] else ''})",
            "",
            "| batch | " + " | ".join(labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for batch, bench in r["bench"].items():
            cells = [
                f"{v['median']:.2f} ({v['p10']:.2f}–{v['p90']:.2f}) ×{v['speedup_vs_eager']}"
                for v in bench.values()
            ]
            lines.append(f"| {batch} | " + " | ".join(cells) + " |")
        lines += ["", "Parity vs fp32 eager: the final sample (relative RMS / max-abs), and one step "
                  "(one call) alone. Eager from x_T moved by 1 ulp sets the scale of fp32 rounding on "
                  "this trajectory; the trajectory tolerance is at least twice that.", "",
                  "| batch | path | rel RMS | max abs | 1 step rel RMS | eager 1 ulp | tolerance | ok |",
                  "|---|---|---|---|---|---|---|---|"]
        for batch, parity in r["parity"].items():
            for label, m in parity.items():
                lines.append(
                    f"| {batch} | {label} | {m['rel_rms']:.2e} | {m['max_abs']:.2e} | "
                    f"{m['one_step_rel_rms']:.2e} | {r['eager_1ulp_rel_rms'][batch]:.2e} | "
                    f"{m['tolerance_rel_rms']:.0e} | {'yes' if m['ok'] else '**no**'} |"
                )
        lines.append("")
    return "\n".join(lines)




def run_selfcheck(names: list[str], *, steps: int, batches: list[int], precisions: list[str], repeats: int,
                  opt_level: int, cache_dir: Path | None, log) -> dict[str, Any]:
    """The whole self-check as a JSON-able report (`ok` per path under each model's parity)."""
    import torch

    from ddpm_rt.doctor import collect
    from ddpm_rt.sources import resolve_source

    # fp32 means fp32 on every path (TensorRT fp32 engines are built with TF32 off too)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sources = {n: pinned_source(cifar10_unet_source() if n == CIFAR_NAME else resolve_source(n)) for n in names}
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "environment": collect(),
        "repeats": repeats,
        "batches": batches,
        "precisions": precisions,
        "models": [],
    }
    for n, src in sources.items():
        report["models"].append(_check_model(
            n, src, steps=steps, batches=batches, precisions=precisions, repeats=repeats,
            opt_level=opt_level, cache_dir=cache_dir, log=log,
        ))
    return report


def failures(report: dict[str, Any]) -> list[str]:
    return [f"{r['model']} b={b} {label}" for r in report["models"] for b, parity in r["parity"].items()
            for label, m in parity.items() if not m["ok"]]
