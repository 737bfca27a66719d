"""The in-browser host (examples/web: onnxruntime-web in a Web Worker) in a real headless Chromium.

`ddpm-rt web`'s server runs in this process; the browser opens its page, the test hands the
page x_T and the per-step noise (`window.ddpmRt.run`), and the samples come back to be
compared with the Python ORT loop (`sample_loop` over an ORT session on the plain denoiser)
on the same inputs: ≤ 1e-4 max-abs on WASM, for the step graph and the full-loop graph, for
DDIM, DDPM (which reads the noise) and a multistep solver; guided sampling of a small
class-conditional model at several guidance scales, and edits (strength and inpainting) of it
and of digits. The page's own controls (the class picker, the guidance slider, "edit the last
result"), its local-file path and its messages for bad input are driven as a person would.

Skipped where Chromium or npm is missing; `.ci/run` installs Debian's `chromium`, and the
page's onnxruntime-web comes from npm (`npm ci` in examples/web, on first use).
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.conditioning import CondInput
from ddpm_rt.exporter import sampler_export as SE
from ddpm_rt.models.catalog import shipped_bundle
from ddpm_rt.schedule import ScheduleSpec
from ddpm_rt.spec import DiffusionSpec
from ddpm_rt.web.chromium import Chromium, find_chromium
from ddpm_rt.web.drive import choose_files, click_sample, open_page, run_page
from ddpm_rt.web.graphs import GraphRequest, GraphStore, WebModel
from ddpm_rt.web.page import ORT_PACKAGE, default_page_dir, ensure_page
from ddpm_rt.web.server import make_server, serve_in_thread
from tests.helpers.graphs import tiny_bundle

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


# A small class-conditional model (3 classes + the null label 3, default guidance 2), built here with
# no torch: the page must handle any conditional catalog model from its catalog entry alone.
LABELS = (CondInput("class_labels", "class", num_classes=3, null=3),)
COND_SPEC = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=100), "epsilon", (1, 8, 8),
                          clip=(-1.0, 1.0), sampler_defaults={"guidance_scale": 2.0}, conditioning=LABELS)


@pytest.fixture(scope="module")
def server(page, tmp_path_factory):
    models = [WebModel(n, load_bundle(shipped_bundle(n)), f"builtin:{n}") for n in ("digits", "swissroll")]
    cond = tiny_bundle(tmp_path_factory.mktemp("tiny-cond"), COND_SPEC)
    models.append(WebModel("tiny-cond", cond, "test:tiny-cond"))
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


def test_local_guided_graph_file_runs_with_its_own_conditioning(browser, server):
    """A guided graph chosen from disk while an unconditional model is selected: its description's
    conditioning drives the run (one row per class)."""
    click_sample(browser, model="swissroll", sampler="ddim", steps=3, ep="wasm")
    onnx_path, side = server.store.graph(GraphRequest("tiny-cond", "ddim", 4, "loop"))
    browser.evaluate("document.getElementById('batch').value = '3'")
    out = choose_files(browser, [onnx_path, side])
    assert "error" not in out, out
    assert out["guided"] and out["cond"] == {"class_labels": [0, 1, 2]} and out["array"].shape == (3, 1, 8, 8)
    assert out["guidance"] == 2.0  # the description's default_guidance


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


# ---------------------------------------------------------------- guided sampling and edits


def _cond_inputs(b, steps: int, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, *b.spec.sample_shape), dtype=np.float32),
            rng.standard_normal((steps, batch, *b.spec.sample_shape), dtype=np.float32))


@pytest.mark.parametrize(("graph", "sampler"), [("step", "ddim"), ("loop", "dpmpp-2m"), ("step", "ddpm")])
def test_guided_browser_samples_equal_python_loop(browser, server, graph, sampler):
    """CFG inside the graph (the batch doubled to 2B, u + w·(c − u)) in the page = runtime.guidance in Python."""
    b = server.store.models["tiny-cond"].bundle
    x_init, noise = _cond_inputs(b, STEPS, BATCH, 21)
    labels = [0, 2, 3]  # 3: the null label
    s = b.spec.sampler(STEPS, sampler=sampler)
    plan, options = b.spec.plan(s), SE.graph_options(b.spec, s, edit=False)
    outs = {}
    for w in (0.0, 1.0, 3.0):
        out = run_page(browser, {"model": "tiny-cond", "sampler": sampler, "steps": STEPS, "graph": graph,
                                 "batch": BATCH, "ep": "wasm", "threads": 1, "cond": {"class_labels": labels},
                                 "guidance": w}, x_init, noise if graph == "step" else None)
        assert "error" not in out, out
        assert out["guided"] and out["guidance"] == w and out["cond"] == {"class_labels": labels}
        extras = {"class_labels": np.array(labels, np.int64), "guidance_scale": np.array(w, np.float32),
                  "guidance_rescale": np.array(0.0, np.float32)}
        ref = SE.reference_loop(str(b.onnx_path), plan, x_init, noise, extras=extras, options=options)
        assert np.max(np.abs(out["array"] - ref)) <= TOL, w
        outs[w] = out["array"]
    assert np.max(np.abs(outs[3.0] - outs[1.0])) > 1e-3 and np.max(np.abs(outs[0.0] - outs[1.0])) > 1e-3
    # the null label's sample is the same at every w (c = u)
    np.testing.assert_allclose(outs[3.0][2], outs[0.0][2], rtol=0, atol=1e-5)


def _half_mask(shape: tuple[int, ...], batch: int) -> np.ndarray:
    mask = np.zeros((batch, *shape), np.float32)
    mask[..., : shape[-1] // 2] = 1.0  # the left half known
    return mask


@pytest.mark.parametrize(("model", "graph", "sampler", "strength"), [
    ("tiny-cond", "step", "unipc", 0.6), ("tiny-cond", "loop", "ddpm", 1.0), ("digits", "step", "ddim", 0.6),
])
def test_browser_edit_equals_python_loop(browser, server, model, graph, sampler, strength):
    """An edit in the page (start from the strength, the left half kept by the mask preset) = the Python
    loop with ddpm_rt.editing; the known region ends as the image itself."""
    b = server.store.models[model].bundle
    x_init, noise = _cond_inputs(b, STEPS, BATCH, 31)
    image = np.random.default_rng(32).uniform(-1, 1, (BATCH, *b.spec.sample_shape)).astype(np.float32)
    options = {"model": model, "sampler": sampler, "steps": STEPS, "graph": graph, "ep": "wasm", "threads": 1,
               "edit": {"strength": strength, "mask": "left"}}
    if b.spec.conditional:
        options |= {"cond": {"class_labels": [1, 2, 0]}, "guidance": 3}
    out = run_page(browser, options, x_init, noise, image=image)
    assert "error" not in out, out
    start = STEPS - min(int(STEPS * strength), STEPS)
    assert out["edit"] and out["start"] == start and len(out["stepMs"]) == STEPS - start
    s = b.spec.sampler(STEPS, sampler=sampler)
    extras = {"start": np.array(start, np.int64), "image": image, "mask": _half_mask(b.spec.sample_shape, BATCH)}
    if b.spec.conditional:
        extras |= {"class_labels": np.array([1, 2, 0], np.int64), "guidance_scale": np.array(3.0, np.float32),
                   "guidance_rescale": np.array(0.0, np.float32)}
    ref = SE.reference_loop(str(b.onnx_path), b.spec.plan(s), x_init, noise, extras=extras,
                            options=SE.graph_options(b.spec, s, edit=True))
    assert np.max(np.abs(out["array"] - ref)) <= TOL
    half = b.spec.sample_shape[-1] // 2
    np.testing.assert_allclose(out["array"][..., :half], image[..., :half], rtol=0, atol=1e-5)  # kept
    assert np.max(np.abs(out["array"][..., half:] - image[..., half:])) > 0.1  # generated


def _figure_ink(c: Chromium, canvas: str) -> int:
    return c.evaluate(f"""(() => {{ const cv = document.getElementById('{canvas}');
      if (cv.closest('figure').hidden) return -1;
      const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data; let n = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i] > 20) n++;
      return n; }})()""")


def test_page_offers_classes_and_guidance_for_a_conditional_model(browser):
    """As a person would: choose the conditional model; its class picker and guidance slider appear (the
    model's default w), "one row per class" fills a grid row by row; an unconditional model hides them."""
    out = click_sample(browser, model="tiny-cond", sampler="ddim", steps=5, batch=4, ep="wasm")
    assert "error" not in out, out
    assert out["array"].shape == (6, 1, 8, 8)  # 4 rounded up to 2 per class, 3 classes
    assert out["cond"] == {"class_labels": [0, 0, 1, 1, 2, 2]} and out["cols"] == 2 and out["guidance"] == 2.0
    panel = browser.evaluate("""(() => ({hidden: !document.getElementById('cond-panel').checkVisibility(),
      classes: [...document.getElementById('class').options].map((o) => o.value),
      w: document.getElementById('guidance').value, shown: document.getElementById('guidance-value').textContent,
      stats: document.getElementById('stats').textContent}))()""")
    assert panel["hidden"] is False and panel["classes"] == ["rows", "0", "1", "2", "null"]
    assert panel["w"] == "2" and panel["shown"] == "2.0"
    assert "guided: one row per class, w 2" in panel["stats"]
    one = click_sample(browser, model="tiny-cond", sampler="ddim", steps=5, batch=4, ep="wasm", **{"class": "null"})
    assert one["cond"] == {"class_labels": [3, 3, 3, 3]} and one["array"].shape == (4, 1, 8, 8)
    click_sample(browser, model="swissroll", sampler="ddim", steps=3, ep="wasm")
    assert browser.evaluate("document.getElementById('cond-panel').checkVisibility()") is False  # not just the attribute


def test_edit_the_last_result_shows_input_mask_and_result(browser):
    """Sample digits, then "Edit the last result" keeping the top half: input | mask | result on the page,
    the top half of the result is the last samples' own."""
    first = click_sample(browser, model="digits", sampler="ddim", steps=8, batch=4, ep="wasm")
    assert "error" not in first, first
    assert _figure_ink(browser, "edit-input") == -1  # no edit figures after a plain run
    edited = click_sample(browser, button="edit-last", mask="top", strength="0.5")
    assert "error" not in edited, edited
    assert edited["start"] == 4 and edited["array"].shape == first["array"].shape
    np.testing.assert_allclose(edited["array"][..., :8, :], first["array"][..., :8, :], rtol=0, atol=1e-5)
    assert np.max(np.abs(edited["array"][..., 8:, :] - first["array"][..., 8:, :])) > 0.05
    assert _figure_ink(browser, "edit-input") > 100 and _figure_ink(browser, "edit-mask") > 100
    stats = browser.evaluate("document.getElementById('stats').textContent")
    assert "edit: steps 4..7 of 8 (strength 0.5), keeps the top half" in stats
    # the drawing pad: a stroke, then an edit from it (every sample starts from the same drawing)
    browser.evaluate("""(() => { const pad = document.getElementById('pad'); const r = pad.getBoundingClientRect();
      const ev = (type, x, y) => pad.dispatchEvent(new PointerEvent(type, {clientX: r.left + x, clientY: r.top + y,
        buttons: 1, pointerId: 1, bubbles: true}));
      ev('pointerdown', 60, 20); ev('pointermove', 64, 70); ev('pointermove', 66, 110); ev('pointerup', 66, 110); })()""")
    assert browser.evaluate("document.getElementById('edit-source').value") == "pad"
    drawn = click_sample(browser, mask="none", strength="0.3", batch=2)
    assert "error" not in drawn and drawn["array"].shape == (2, 1, 16, 16) and drawn["start"] == 6, drawn


@pytest.mark.parametrize(("options", "needles"), [
    ({"model": "digits", "steps": 10, "edit": {"source": "pad", "strength": 0.05}},
     ["strength 0.05 with 10 steps runs no step", "raise the strength to ≥ 0.100"]),
    ({"model": "tiny-cond", "steps": 5, "edit": {"source": "last"}}, ["there is no last result of tiny-cond"]),
    ({"model": "tiny-cond", "steps": 5, "cond": {"class_labels": [0, 7]}},
     ["class_labels: label 7 is out of range; this model takes 0..2 (and 3 for no label)"]),
    ({"model": "swissroll", "edit": {"source": "pad"}}, ["the drawing pad makes an image; this model samples points"]),
])
def test_bad_edit_or_conditioning_shows_one_clear_message(browser, options, needles):
    browser.evaluate("document.getElementById('edit-source').value = 'none'")
    message = _message_after(browser, run_page(browser, {"batch": 2, "ep": "wasm", **options}))
    for needle in needles:
        assert needle in message, message
    browser.evaluate("document.getElementById('edit-source').value = 'none'")


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


def test_webgpu_kernel_refused_by_the_device_is_one_clear_message(gpu_browser, server, monkeypatch):
    """A kernel past the device's limits (here: the plan row split 8 ways in one node, as graphs were
    exported before SPLIT_WIDTH, under WebGPU's default limits as ORT alone asks) is refused; ORT only
    logs that and returns zeros: the page says so instead of drawing them. Today's graphs fit."""
    from ddpm_rt.exporter import sampler_graph

    open_page(gpu_browser, server.url + "?webgpu-limits=default")
    run = {"model": "swissroll", "sampler": "dpmpp-2m", "graph": "step", "batch": 4, "ep": "webgpu"}
    fits = run_page(gpu_browser, {**run, "steps": 5})
    assert "error" not in fits and fits["ep"] == "webgpu", fits  # every Split <= 6 ways: 7 buffers
    monkeypatch.setattr(sampler_graph, "SPLIT_WIDTH", 16)  # one 8-way Split (a graph no cache holds: 7 steps)
    out = run_page(gpu_browser, {**run, "steps": 7})
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


def test_webgpu_guided_graphs_and_edit_graphs(gpu_browser, server):
    """A guided graph (the batch doubled inside) and an edit step graph (12+ plan coefficients, split at
    most 6 ways per node) on WebGPU = the Python loop; `auto` keeps WASM on a software adapter."""
    b = server.store.models["tiny-cond"].bundle
    x_init, noise = _cond_inputs(b, 6, 2, 41)
    options = {"model": "tiny-cond", "sampler": "dpmpp-2m", "steps": 6, "graph": "step", "ep": "webgpu", "batch": 2,
               "cond": {"class_labels": [2, 0]}, "guidance": 3}
    out = run_page(gpu_browser, options, x_init, noise)
    assert "error" not in out and out["ep"] == "webgpu", out
    s = b.spec.sampler(6, sampler="dpmpp-2m")
    extras = {"class_labels": np.array([2, 0], np.int64), "guidance_scale": np.array(3.0, np.float32),
              "guidance_rescale": np.array(0.0, np.float32)}
    ref = SE.reference_loop(str(b.onnx_path), b.spec.plan(s), x_init, noise, extras=extras,
                            options=SE.graph_options(b.spec, s, edit=False))
    assert np.max(np.abs(out["array"] - ref)) <= 1e-3
    image = np.zeros((2, *b.spec.sample_shape), np.float32)
    edit = {**options, "sampler": "ddim", "edit": {"start": 2, "mask": "left"}}
    out = run_page(gpu_browser, edit, x_init, noise, image=image)
    assert "error" not in out and out["ep"] == "webgpu", out
    sd = b.spec.sampler(6, sampler="ddim")
    ref = SE.reference_loop(str(b.onnx_path), b.spec.plan(sd), x_init, noise,
                            extras={**extras, "start": np.array(2, np.int64), "image": image,
                                    "mask": _half_mask(b.spec.sample_shape, 2)},
                            options=SE.graph_options(b.spec, sd, edit=True))
    assert np.max(np.abs(out["array"] - ref)) <= 1e-3  # the edit step graph now fits the adapter's limits
    assert run_page(gpu_browser, {**edit, "ep": "auto"}, x_init, noise, image=image)["ep"] == "wasm"
