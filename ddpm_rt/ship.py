"""Ship a trained checkpoint as a built-in model: measure its quality and write
assets/<name>/{model.safetensors, config.json, MODEL_CARD.md}.

Shipped weights are the checkpoint's EMA weights stored as float16 (loaded as float32) to keep
the wheel small; the quality figures are measured on exactly those rounded weights.

    python -m ddpm_rt.ship digits /tmp/train/digits --samples 1000
    python -m ddpm_rt.ship cond-digits /work/train/cond-digits --samples 1000 --guidance 0 1 2 3

A class-conditional model is measured per guidance scale w (classifier-free guidance): n samples
with labels cycling over the classes, the fraction the digits classifier puts in the class asked
for (overall and the worst class), and the feature FD to the held-out split.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_rt import weights
from ddpm_rt.models.catalog import get_builtin, shipped_dir
from ddpm_rt.quality.report import quality_report
from ddpm_rt.quality.sampling import sample_module
from ddpm_rt.train import checkpoint as ck
from ddpm_rt.train.trainer import machine


def measure(name: str, module: torch.nn.Module, n: int, steps: int | None, seed: int) -> dict[str, Any]:
    """Sample n with the model's default sampler at `steps`, then score them."""
    spec = get_builtin(name).spec
    t0 = time.perf_counter()
    x = sample_module(module, spec, n, steps=steps, seed=seed)
    wall = time.perf_counter() - t0
    sampler = spec.sampler(steps=steps)
    report = quality_report(name, x)
    report["sampler"] = {"sampler": sampler.sampler, "steps": sampler.steps, "step_scale": sampler.step_scale}
    report["sampling_wall_s"] = round(wall, 2)
    return report


def measure_conditional(name: str, module: torch.nn.Module, n: int, steps: int | None, seed: int,
                        scale: float) -> dict[str, Any]:
    """n samples at guidance scale `scale`, labels 0, 1, …, K-1, 0, …; scored per requested class."""
    from ddpm_rt.quality.digits_classifier import features_and_probs

    spec = get_builtin(name).spec
    cond = spec.conditioning[0]
    if cond.kind != "class" or cond.num_classes is None:
        raise SystemExit(f"{name}: shipping measures class-conditional models only, not {cond.describe()}")
    labels = np.arange(n, dtype=np.int64) % cond.num_classes
    t0 = time.perf_counter()
    x = sample_module(module, spec, n, steps=steps, seed=seed, cond={cond.name: labels}, guidance_scale=scale)
    wall = time.perf_counter() - t0
    report = quality_report(name, x)
    pred = features_and_probs(x)[1].argmax(1)
    per_class = [float(np.mean(pred[labels == k] == k)) for k in range(cond.num_classes)]
    sampler = spec.sampler(steps=steps)
    report |= {"guidance_scale": scale, "class_accuracy": float(np.mean(pred == labels)),
               "class_accuracy_per_class": [round(a, 4) for a in per_class],
               "sampler": {"sampler": sampler.sampler, "steps": sampler.steps, "step_scale": sampler.step_scale},
               "sampling_wall_s": round(wall, 2)}
    return report


TARGET_CLASS_ACCURACY = 0.95  # the default guidance scale must give at least this fraction of the requested class


def pick_default_guidance(reports: list[dict[str, Any]]) -> float | None:
    """Among the measured scales reaching TARGET_CLASS_ACCURACY, the one with the lowest FD (None: none does)."""
    ok = [r for r in reports if r["class_accuracy"] >= TARGET_CLASS_ACCURACY]
    return min(ok, key=lambda r: r["fd"])["guidance_scale"] if ok else None


def _cond_table(reports: list[dict[str, Any]]) -> str:
    head = ("| guidance w | sampler | samples | of the requested class | worst class | feature FD to held-out "
            "| real-vs-real FD | ratio | mean confidence |\n|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {r['guidance_scale']:g} | {r['sampler']['sampler']} {r['sampler']['steps']} steps | {r['n_samples']} "
            f"| {100 * r['class_accuracy']:.1f}% | {100 * min(r['class_accuracy_per_class']):.1f}% "
            f"(class {int(np.argmin(r['class_accuracy_per_class']))}) | {r['fd']:.2f} "
            f"| {r['fd_real_vs_real']:.2f} ± {r['fd_real_vs_real_std']:.2f} | {r['fd_ratio']:.2f} "
            f"| {r['mean_confidence']:.3f} |" for r in reports]
    return "\n".join([head, *rows])


def _fmt_report(r: dict[str, Any]) -> str:
    s = r["sampler"]
    head = f"{s['sampler']} {s['steps']} steps" + (f", step_scale {s['step_scale']}" if s["sampler"] == "geometric" else "")
    if r["dataset"] == "digits16":
        return (f"| {head} | {r['n_samples']} | {r['fd']:.2f} | {r['fd_real_vs_real']:.2f} ± {r['fd_real_vs_real_std']:.2f} | "
                f"{r['fd_ratio']:.2f} | {r['mean_confidence']:.3f} | {r['class_counts']} |")
    return (f"| {head} | {r['n_samples']} | {r['energy_distance']:.5f} | {r['energy_distance_real_vs_real']:.5f} ± {r['energy_distance_real_vs_real_std']:.5f} | "
            f"{r['sliced_wasserstein']:.4f} | {r['sliced_wasserstein_real_vs_real']:.4f} ± {r['sliced_wasserstein_real_vs_real_std']:.4f} | {r['sw_ratio']:.2f} | "
            f"{r['nearest_distance']:.4f} | {r['nearest_distance_real_vs_real']:.4f} | {r['nn_ratio']:.2f} |")


def _table(reports: list[dict[str, Any]]) -> str:
    if reports[0]["dataset"] == "digits16":
        head = ("| sampler | samples | feature FD to held-out | real-vs-real FD | ratio | mean confidence | predicted classes 0-9 |\n"
                "|---|---|---|---|---|---|---|")
    else:
        head = ("| sampler | samples | energy distance | real-vs-real | sliced W1 | real-vs-real | SW ratio "
                "| nearest-point dist | real-vs-real | NN ratio |\n"
                "|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(_fmt_report(r) for r in reports)])


def ship(name: str, ckpt: Path, n: int, steps_list: list[int | None], seed: int = 0,
         scales: list[float] | None = None) -> dict[str, Any]:
    builtin = get_builtin(name)
    module, spec, cfg = ck.load_checkpoint(ckpt)
    if cfg["kind"] != name:
        raise SystemExit(f"{ckpt} holds {cfg['kind']!r}, not {name!r}")
    # round to the shipped float16 and measure those weights
    state16 = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in module.state_dict().items()}
    module.load_state_dict(state16)
    module.eval()
    torch.manual_seed(seed)
    untrained = builtin.build(cfg["model_config"]).eval()
    conditional = builtin.spec.conditional
    chosen: float | None = None
    if conditional:
        scales = scales or [0.0, 1.0, builtin.spec.default_guidance]
        trained = [measure_conditional(name, module, n, steps_list[0], seed, w) for w in scales]
        baseline = measure_conditional(name, untrained, n, steps_list[0], seed, 1.0)
        table, base_table = _cond_table(trained), _cond_table([baseline])
        chosen = pick_default_guidance(trained)
    else:
        trained = [measure(name, module, n, s, seed) for s in steps_list]
        baseline = measure(name, untrained, n, steps_list[0], seed)
        table, base_table = _table(trained), _table([baseline])

    out = shipped_dir(name)
    weights.save_tensors(state16, out / ck.MODEL_FILE)
    shipped_cfg = {k: v for k, v in cfg.items() if k != "loss_history"}
    shipped_cfg["weights_dtype"] = "float16"
    shipped_cfg["quality"] = trained
    shipped_cfg["quality_untrained"] = baseline
    if conditional:
        shipped_cfg["guidance_default_measured"] = chosen
    weights.save_json(shipped_cfg, out / ck.CONFIG_FILE)

    tr = cfg["train"]
    command = cfg.get("command") or (
        f"ddpm-rt train {name} --out DIR --steps {tr['steps']} --batch-size {tr['batch_size']} "
        f"--lr {tr['lr']:g} --seed {tr['seed']} --threads {cfg.get('threads', 2)}")
    hist = cfg.get("loss_history", [])
    first = hist[0] if hist else None
    size = (out / ck.MODEL_FILE).stat().st_size
    quality_draws = trained[0]["reference_draws"]
    measured = (f"""Samples from the shipped (float16-rounded) weights via `spec.plan` + `sample_loop`, seed {seed}, scored by
`ddpm_rt.quality.report.quality_report` against the held-out split. The real-vs-real reference
scores the same number of real training examples (disjoint from the held-out split) the same way:
mean ± std over {quality_draws} fixed-seed draws.""" if not conditional else f"""Samples from the shipped (float16-rounded) weights via `spec.plan` + `sample_loop` with classifier-free
guidance (`runtime.guidance.GuidedModel`: out = u + w·(c − u); w = 0 unconditional, w = 1 conditional,
one call each), seed {seed}, labels 0..9 cycling ({n // 10} samples per class). "Of the requested
class": the fraction the project's digits classifier (`ddpm_rt/quality/digits_classifier.py`) puts
in the class asked for. FD: feature Fréchet distance to the held-out split, with the real-vs-real
reference (mean ± std over {quality_draws} fixed-seed draws of real training digits).

**Default guidance scale:** {"none of the measured scales reaches" if chosen is None else f"w = {chosen:g}"}
(rule: among the measured scales giving >= {100 * TARGET_CLASS_ACCURACY:.0f}% of the requested class, the lowest FD;
the catalog's `sampler_defaults.guidance_scale` at the time of measuring: {builtin.spec.default_guidance:g}).""")
    card = f"""# {name} — shipped weights

{builtin.description}.

- **Trained with:** `{command}` (`python -m ddpm_rt.commands.train` before the CLI registered `train`)
- **Data:** `{builtin.dataset}` training split (ddpm_rt/datasets.py; fixed seeds){f"; labels replaced by the null label with probability {tr.get('label_dropout')} (classifier-free guidance training)" if conditional else ""}
- **Steps:** {cfg['step']} (batch {tr['batch_size']}, Adam peak lr {tr['lr']:g}, warm-up {tr['warmup']} then cosine to 10%, grad-clip {tr['grad_clip']}, EMA {tr['ema_decay']})
- **Loss:** {'n/a' if first is None else f'{first[1]:.4f} (mean of steps 1-{first[0]})'} → {cfg.get('final_loss')} (mean of the last {tr['log_every']} steps)
- **Training wall time:** {cfg.get('wall_s')} s on {cfg.get("threads")} torch thread(s), torch {cfg.get('torch_version')}
- **Machine:** {cfg.get('machine') or machine()} (CPU shared with other jobs while training)
- **Weights:** EMA weights, stored as float16 ({size / 1e6:.2f} MB), loaded as float32; {sum(p.numel() for p in module.parameters()):,} parameters
- **Spec:** schedule `{spec.schedule.kind}` T={spec.schedule.num_train_timesteps}, prediction `{spec.prediction_type}`, sample shape {list(spec.sample_shape)}, clip {spec.clip}, sampler defaults {spec.sampler_defaults}

## Measured quality

{measured}

{table}

Untrained weights (same architecture, same sampler, for scale):

{base_table}
"""
    from ddpm_rt.fsutil import atomic_write_text

    atomic_write_text(out / "MODEL_CARD.md", card)
    return {"trained": trained, "untrained": baseline,
            **({"guidance_default_measured": chosen} if conditional else {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("ckpt", type=Path)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--steps", type=int, nargs="*", default=None, help="sampler step counts (default: the model's)")
    p.add_argument("--guidance", type=float, nargs="*", default=None,
                   help="conditional models: guidance scales to measure (default: 0, 1 and the model's default)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = ship(args.name, args.ckpt, args.samples, args.steps or [None], scales=args.guidance)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
