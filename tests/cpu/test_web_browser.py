"""The in-browser host (examples/web: onnxruntime-web in a Web Worker) in a real headless Chromium.

`ddpm-rt web`'s server runs in this process; the browser opens its page, the test hands the
page x_T and the per-step noise (`window.ddpmRt.run`), and the samples come back to be
compared with the Python ORT loop (`sample_loop` over an ORT session on the plain denoiser)
on the same inputs: ≤ 1e-4 max-abs on WASM, for the step graph and the full-loop graph, for
DDIM, DDPM (which reads the noise) and a multistep solver. The page's own controls, its
local-file path and its messages for bad input are driven as a person would.

Skipped where Chromium or npm is missing; `.ci/run` installs Debian's `chromium`, and the
page's onnxruntime-web comes from npm (`npm ci` in examples/web, on first use).
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.exporter import sampler_export as SE
from ddpm_rt.models.catalog import shipped_bundle
from ddpm_rt.web.chromium import Chromium, find_chromium
from ddpm_rt.web.drive import choose_files, click_sample, open_page, run_page
from ddpm_rt.web.graphs import GraphRequest, GraphStore, WebModel
from ddpm_rt.web.page import ORT_PACKAGE, default_page_dir, ensure_page
from ddpm_rt.web.server import make_server, serve_in_thread

STEPS = 10
BATCH = 3
TOL = 1e-4  # WASM against native ORT: different kernels (no AVX), ~3e-6 measured


@pytest.fixture(scope="module")
def page():
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does): no browser to test in")
    installed = (default_page_dir() / "node_modules" / ORT_PACKAGE).is_dir()
    if not installed and shutil.which("npm") is None:
        pytest.skip(f"npm is not installed: {ORT_PACKAGE} cannot be installed for the page")
    return ensure_page()  # npm ci on first use


@pytest.fixture(scope="module")
def server(page, tmp_path_factory):
    models = [WebModel(n, load_bundle(shipped_bundle(n)), f"builtin:{n}") for n in ("digits", "swissroll")]
    store = GraphStore(models, cache_dir=tmp_path_factory.mktemp("web-cache"))
    srv = make_server(store, page, port=0)
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser(server):
    with Chromium() as c:
        open_page(c, server.url)
        yield c


def _canvas_ink(c: Chromium) -> int:
    """Pixels of the canvas that are neither transparent nor white."""
    return c.evaluate("""(() => { const cv = document.getElementById('canvas');
      const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data; let n = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) n++;
      return n; })()""")


@pytest.mark.parametrize(("graph", "sampler", "threads"), [
    ("step", "ddim", 1), ("loop", "ddim", 1), ("step", "ddpm", 1), ("step", "unipc", 1), ("loop", "unipc", 1),
    ("step", "dpmpp-2m", 2),
])
def test_browser_samples_equal_python_ort_loop(browser, server, graph, sampler, threads):
    b = server.store.models["digits"].bundle
    rng = np.random.default_rng(11)
    x_init = rng.standard_normal((BATCH, *b.spec.sample_shape), dtype=np.float32)
    noise = rng.standard_normal((STEPS, BATCH, *b.spec.sample_shape), dtype=np.float32)
    out = run_page(browser, {"model": "digits", "sampler": sampler, "steps": STEPS, "graph": graph, "batch": BATCH,
                         "ep": "wasm", "threads": threads}, x_init, noise if graph == "step" else None)
    assert "error" not in out, out
    assert (out["ep"], out["threads"], out["graph"], out["sampler"], out["steps"]) == ("wasm", threads, graph,
                                                                                       sampler, STEPS)
    assert len(out["stepMs"]) == STEPS and out["totalMs"] > 0
    plan = b.spec.plan(b.spec.sampler(STEPS, sampler=sampler))
    ref = SE.reference_loop(str(b.onnx_path), plan, x_init, noise)
    assert out["array"].shape == ref.shape
    assert np.max(np.abs(out["array"] - ref)) <= TOL
    assert not np.allclose(ref, x_init)  # the run did sample


def test_threads_need_and_have_cross_origin_isolation(browser):
    env = browser.evaluate("window.ddpmRt.env")
    assert env["isolated"] is True  # the server's COOP/COEP headers
    assert browser.evaluate("document.getElementById('threads').options.length") == env["cores"]


def test_page_controls_sample_and_show_timings(browser):
    """As a person would: choose swissroll, press Sample; a scatter, per-step times, no message."""
    out = click_sample(browser, model="swissroll", ep="auto")
    assert "error" not in out, out
    assert (out["sampler"], out["steps"], out["ep"]) == ("ddpm", 40, "wasm")  # the model's default; no GPU here
    assert out["array"].shape == (1000, 2) and np.all(np.isfinite(out["array"]))
    texts = browser.evaluate("[...['stats', 'per-step', 'progress-text']].map((i) => document.getElementById(i).textContent)")
    assert "swissroll · ddpm 40 steps · step graph · wasm" in texts[0] and "ms/step" in texts[0]
    assert texts[1].startswith("per step, ms: ") and texts[1].count("·") == 39
    assert texts[2] == "done: 40 steps"
    assert browser.evaluate("document.getElementById('message').hidden") is True
    assert _canvas_ink(browser) > 500


def test_local_graph_filesrun_page(browser, server):
    """An exported graph chosen from disk (X.onnx + X.json) runs like a served one."""
    onnx_path, side = server.store.graph(GraphRequest("swissroll", "ddim", 8, "loop"))
    out = choose_files(browser, [onnx_path, side])
    assert "error" not in out, out
    assert (out["graph"], out["sampler"], out["steps"]) == ("loop", "ddim", 8)


def _message_after(browser: Chromium, out: dict[str, Any]) -> str:
    assert "error" in out, out
    assert out["shown"] and out["message"] == out["error"], out  # the same one line, on the page
    assert "\n" not in out["message"]
    assert _canvas_ink(browser) == 0  # no stale samples beside the message
    return out["message"]


@pytest.mark.parametrize(("options", "needles"), [
    ({"model": "nope"}, ["cannot fetch the sampler description", "HTTP 404", "unknown model 'nope'"]),
    ({"model": "digits", "sampler": "ddpm", "graph": "loop", "steps": 5},
     ["HTTP 400", "full-loop graph needs a deterministic sampler"]),
    ({"model": "digits", "ep": "webgpu"}, ["WebGPU is not available in this browser", "choose WASM"]),
    ({"model": "digits", "ep": "webnn"}, ["ep 'webnn' is not one of this page's choices: auto, webgpu, wasm"]),
    ({"model": "digits", "threads": 64}, ["threads '64' is not one of this page's choices: 1"]),
])
def test_bad_input_shows_one_clear_message(browser, options, needles):
    message = _message_after(browser, run_page(browser, {"batch": 2, **options}))
    for needle in needles:
        assert needle in message, message


def test_a_graph_that_is_not_a_sampler_shows_one_clear_message(browser, server):
    bundle = server.store.models["swissroll"].bundle
    _, side = server.store.graph(GraphRequest("swissroll", "ddim", 8, "loop"))
    cases = [
        ([bundle.onnx_path, side], "is not the ddpm-rt sampler graph its description describes"),
        ([bundle.onnx_path, bundle.directory / "ddpm_rt.json"], "it is a bundle manifest"),
        ([bundle.onnx_path], "choose two files"),
    ]
    for files, needle in cases:
        assert needle in _message_after(browser, choose_files(browser, files)), needle


@pytest.fixture(scope="module")
def gpu_browser(server):
    """A second browser with WebGPU on SwiftShader (Vulkan on the CPU), where this Chromium ships it."""
    with Chromium(webgpu=True) as c:
        open_page(c, server.url)
        if not c.evaluate("window.ddpmRt.env.webgpu"):
            pytest.skip("this headless Chromium exposes no WebGPU adapter, even with SwiftShader")
        yield c


@pytest.mark.parametrize(("graph", "sampler"), [("step", "ddim"), ("loop", "dpmpp-2m"), ("step", "dpmpp-2m")])
def test_webgpu_samples_equal_python_ort_loop(gpu_browser, server, graph, sampler):
    """WebGPU (a software adapter here: seconds per step for digits, so the small swissroll MLP).

    The multistep step graph splits its plan row into 8 coefficients, more storage buffers than
    WebGPU's default limit of 8 allows (input + outputs), which the page raises to the adapter's."""
    env = gpu_browser.evaluate("window.ddpmRt.env")
    assert env["webgpu"]["fallback"] is True  # SwiftShader: `auto` keeps WASM (see the next assert)
    b = server.store.models["swissroll"].bundle
    rng = np.random.default_rng(5)
    x_init = rng.standard_normal((4, 2), dtype=np.float32)
    out = run_page(gpu_browser, {"model": "swissroll", "sampler": sampler, "steps": 5, "graph": graph,
                                 "batch": 4, "ep": "webgpu"}, x_init, np.zeros((5, 4, 2), np.float32))
    assert "error" not in out and out["ep"] == "webgpu", out
    ref = SE.reference_loop(str(b.onnx_path), b.spec.plan(b.spec.sampler(5, sampler=sampler)), x_init,
                            np.zeros((5, 4, 2), np.float32))
    assert np.max(np.abs(out["array"] - ref)) <= 1e-3  # GPU float math: 5e-5 measured
    assert run_page(gpu_browser, {"model": "swissroll", "ep": "auto", "batch": 4, "graph": "step"})["ep"] == "wasm"


def test_webgpu_kernel_refused_by_the_device_is_one_clear_message(gpu_browser, server):
    """With WebGPU's default limits (as ORT alone asks) the multistep step graph's Split is refused;
    ORT only logs that and returns zeros: the page says so instead of drawing them."""
    open_page(gpu_browser, server.url + "?webgpu-limits=default")
    out = run_page(gpu_browser, {"model": "swissroll", "sampler": "dpmpp-2m", "steps": 5, "graph": "step",
                                 "batch": 4, "ep": "webgpu"})
    message = _message_after(gpu_browser, out)
    assert message.startswith("WebGPU refused a kernel of this graph at step 0 (The number of storage buffers")
    assert message.endswith("so its samples would be wrong; choose WASM")
    open_page(gpu_browser, server.url)


@pytest.mark.parametrize(("sampler", "graph"), [("unipc", "step"), ("dpmpp-3m", "loop")])
def test_webgpu_runs_graphs_with_a_history_of_two(gpu_browser, server, sampler, graph):
    """A history of 2+ past outputs gave wrong digits samples on ORT-web 1.30.0's WebGPU while the shift
    was an Identity from a graph input to an output; passed on as x·1 they equal the Python loop."""
    b = server.store.models["digits"].bundle
    rng = np.random.default_rng(6)
    x_init = rng.standard_normal((1, *b.spec.sample_shape), dtype=np.float32)
    zeros = np.zeros((3, 1, *b.spec.sample_shape), np.float32)
    out = run_page(gpu_browser, {"model": "digits", "sampler": sampler, "steps": 3, "graph": graph, "batch": 1,
                                 "ep": "webgpu"}, x_init, zeros)
    assert "error" not in out and out["ep"] == "webgpu", out
    ref = SE.reference_loop(str(b.onnx_path), b.spec.plan(b.spec.sampler(3, sampler=sampler)), x_init, zeros)
    assert np.max(np.abs(out["array"] - ref)) <= 1e-3
