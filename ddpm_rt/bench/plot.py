"""The bench PNG: images/s against batch per backend, and per-step latency bars (median, p90)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm_rt.fsutil import atomic_write


def plot(result: dict[str, Any], path: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["results"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    by = {(r["backend"], r["batch"]): r for r in rows}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for name in backends:
        bs = [b for b in batches if (name, b) in by]
        ax1.plot(bs, [by[name, b]["images_per_s"] for b in bs], marker="o", label=name)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xticks(batches, [str(b) for b in batches])
    ax1.set_xlabel("batch")
    ax1.set_ylabel("images / s (median run)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    width = 0.8 / max(len(backends), 1)
    x = np.arange(len(batches))
    for i, name in enumerate(backends):
        med = [by[name, b]["step_ms"]["median"] if (name, b) in by else 0 for b in batches]
        p90 = [by[name, b]["step_ms"]["p90"] if (name, b) in by else 0 for b in batches]
        err = np.maximum(np.array(p90) - np.array(med), 0)
        ax2.bar(x + i * width - 0.4 + width / 2, med, width, yerr=[np.zeros_like(err), err],
                capsize=3, label=name)
    ax2.set_xticks(x, [str(b) for b in batches])
    ax2.set_xlabel("batch")
    ax2.set_ylabel("ms per step (median, bar to p90)")
    ax2.set_yscale("log")
    ax2.grid(True, axis="y", which="both", alpha=0.3)
    ax2.legend()
    plan, env = result["plan"], result["environment"]
    fig.suptitle(title or f"{result['source']} · {plan['sampler']} {plan['steps']} steps · "
                 f"{env['cpu']} · {result['config']['threads']} threads", fontsize=10)
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return Path(path)
