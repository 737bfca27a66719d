"""Shared by the bench scripts: argument defaults, merging suites, writing JSON + Markdown + PNG."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, default=None, help="threads for every backend (default: all usable cores)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    return p


def merge(first: dict[str, Any], *more: dict[str, Any]) -> dict[str, Any]:
    """One result from suites run back to back on the same model and plan (rows concatenated)."""
    out = json.loads(json.dumps(first, default=str))
    for extra in more:
        out["results"] += extra["results"]
        out["config"]["batches"] = list(out["config"]["batches"]) + list(extra["config"]["batches"])
        out["config"].setdefault("per_batch_runs", {})
        out["environment"]["loadavg_end"] = extra["environment"]["loadavg_end"]
        out["environment"]["max_rss_mb"] = extra["environment"]["max_rss_mb"]
    return out


def write(stem: str, result: dict[str, Any], title: str, notes: list[str], out: Path = RESULTS) -> None:
    from ddpm_rt.bench.plot import plot
    from ddpm_rt.bench.report import markdown_report
    from ddpm_rt.fsutil import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=2, default=str) + "\n")
    atomic_write_text(out / f"{stem}.md", markdown_report(result, title, notes))
    plot(result, out / f"{stem}.png", title)
    log(f"wrote {out / stem}.{{json,md,png}}")


def row(result: dict[str, Any], backend: str, batch: int) -> dict[str, Any] | None:
    return next((r for r in result["results"] if r["backend"] == backend and r["batch"] == batch), None)


def labelled_strips(rows: dict[str, Any], path: Path, data_range: tuple[float, float], label_w: int = 150) -> None:
    """A PNG of one labelled row of images per entry of `rows` (name -> array [n, C, H, W])."""
    from PIL import Image, ImageDraw

    from ddpm_rt.output import image_grid

    grids = [(name, image_grid(a, data_range, cols=len(a))[..., 0]) for name, a in rows.items()]
    img = Image.new("L", (label_w + grids[0][1].shape[1], sum(g.shape[0] for _, g in grids)), 255)
    draw = ImageDraw.Draw(img)
    y = 0
    for name, g in grids:
        img.paste(Image.fromarray(g), (label_w, y))
        draw.text((4, y + g.shape[0] // 2 - 6), name, fill=0)
        y += g.shape[0]
    img.save(path)
