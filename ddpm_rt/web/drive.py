"""Drive the served page from Python (the browser test, the browser benchmark, the README screenshot).

`run_page` calls the page's own `window.ddpmRt.run(options)` — the path the Sample button
takes — with x_T and the per-step noise handed over as float32 arrays, and returns the
samples as a numpy array with the page's timings, or the one-line message the page shows.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.web.chromium import Chromium

# Float32Array <-> base64 inside the page, so arrays cross the DevTools pipe as strings
JS_CODEC = """
const dec = (s) => { const b = atob(s); const u = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i); return new Float32Array(u.buffer); };
const enc = (f) => { const u = new Uint8Array(f.buffer, f.byteOffset, f.byteLength); let s = '';
  for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode(...u.subarray(i, i + 8192)); return btoa(s); };
const done = (r) => ({samples: enc(r.samples), shape: r.shape, stepMs: r.stepMs, totalMs: r.totalMs,
  sessionMs: r.sessionMs, ep: r.ep, threads: r.threads, graph: r.graph, sampler: r.sampler, steps: r.steps,
  start: r.start, guided: r.guided, edit: r.edit, guidance: r.guidance,
  cond: r.cond && Object.fromEntries(Object.entries(r.cond).map(([k, v]) => [k, [...v].map(Number)])), cols: r.cols});
const failed = (e) => ({error: e.message, message: document.getElementById('message').textContent,
  shown: !document.getElementById('message').hidden});
"""
RUN_TIMEOUT_S = 900.0


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def _decoded(out: dict[str, Any]) -> dict[str, Any]:
    if "samples" in out:
        out["array"] = np.frombuffer(base64.b64decode(out.pop("samples")), np.float32).reshape(out["shape"])
    return out


def open_page(browser: Chromium, url: str) -> None:
    """Open the page and wait until it has its model list (raises with the page's message if not)."""
    browser.navigate(url)
    if not browser.evaluate("window.ddpmRt.ready"):
        raise RuntimeError(browser.evaluate("document.getElementById('message').textContent"))


def run_page(browser: Chromium, options: dict[str, Any], x_init: np.ndarray | None = None,
             noise: np.ndarray | None = None, timeout: float = RUN_TIMEOUT_S, image: np.ndarray | None = None,
             mask: np.ndarray | None = None) -> dict[str, Any]:
    """One `ddpmRt.run`: {array, shape, stepMs, totalMs, ep, threads, ...} or {error, message, shown}.

    `image` and `mask` (float32 [batch, ...sample]) make it an edit of `image` (mask 1 = kept)."""
    given = (("xInit", x_init), ("noise", noise), ("image", image), ("mask", mask))
    arrays = "".join(f", {k}: dec('{_b64(v)}')" for k, v in given if v is not None)
    expr = (f"(async () => {{ {JS_CODEC} return window.ddpmRt.run({{...{json.dumps(options)}{arrays}}})"
            ".then(done, failed); })()")
    return _decoded(browser.evaluate(expr, timeout=timeout))


def latest_run(browser: Chromium, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """The outcome of the page's latest run (started by its button, a chosen file or `run_page`)."""
    expr = f"(async () => {{ {JS_CODEC} return window.ddpmRt.lastRun.then(done, failed); }})()"
    return _decoded(browser.evaluate(expr, timeout=timeout))


def choose_files(browser: Chromium, files: list[Path]) -> dict[str, Any]:
    """Choose `files` in the page's file input (as the file dialog would); the run that starts."""
    browser.evaluate("window.__before = window.ddpmRt.lastRun; true")
    browser.set_files("#files", [Path(f) for f in files])
    browser.wait_for("window.ddpmRt.lastRun !== window.__before", timeout=30)
    return latest_run(browser)


def click_sample(browser: Chromium, button: str = "run", **controls: str | int) -> dict[str, Any]:
    """Set the page's controls (by element id), press Sample (or the button `button`, e.g. edit-last);
    the run's outcome."""
    first = {"model": 0, "sampler": 1}  # a model resets the sampler's choices, a sampler the graph's
    sets = [f"set({json.dumps(k)}, {json.dumps(str(v))});" for k, v in
            sorted(controls.items(), key=lambda kv: first.get(kv[0], 2))]
    browser.evaluate("(() => { const set = (id, v) => { const el = document.getElementById(id); el.value = v; "
                     "el.dispatchEvent(new Event('change')); }; " + " ".join(sets)
                     + " window.__before = window.ddpmRt.lastRun; document.getElementById("
                     + json.dumps(button) + ").click(); })()")
    browser.wait_for("window.ddpmRt.lastRun !== window.__before", timeout=30)
    return latest_run(browser)
