"""`ddpm-rt web` without a browser: the sidecar, the graph store, the HTTP server and the command.

The browser itself is in test_web_browser.py. Here the page is a stand-in folder (the server
only serves files), so nothing needs npm.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import pytest

from ddpm_rt.bundle.load import load_bundle
from ddpm_rt.errors import ConfigError
from ddpm_rt.exporter import sampler_export as SE
from ddpm_rt.models.catalog import shipped_bundle
from ddpm_rt.plan import SamplerSpec
from ddpm_rt.web.graphs import GraphRequest, GraphStore, WebModel
from ddpm_rt.web.page import PAGE_FILES, Page, ensure_page, find_page
from ddpm_rt.web.server import ISOLATION_HEADERS, make_server, serve_in_thread
from tests.cli_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def swissroll():
    return load_bundle(shipped_bundle("swissroll"))


@pytest.fixture
def fake_page(tmp_path) -> Page:
    """A page folder with onnxruntime-web 'installed' (stand-in files: the server only serves them)."""
    root = tmp_path / "page"
    ort_dir = root / "node_modules" / "onnxruntime-web"
    (ort_dir / "dist").mkdir(parents=True)
    for name in PAGE_FILES:
        (root / name).write_text(f"// {name}\n")
    (root / "package.json").write_text(json.dumps({"dependencies": {"onnxruntime-web": "1.30.0"}}))
    (ort_dir / "package.json").write_text(json.dumps({"version": "1.30.0"}))
    (ort_dir / "dist" / "ort.min.mjs").write_text("// ort\n")
    (ort_dir / "dist" / "ort-wasm-simd-threaded.jsep.wasm").write_bytes(b"\0asm")
    page = ensure_page(root)  # installed: no npm run
    assert page == Page(root, ort_dir / "dist", "1.30.0")
    return page


@pytest.fixture
def server(tmp_path, swissroll, fake_page):
    logs: list[str] = []
    store = GraphStore([WebModel("swissroll", swissroll, "builtin:swissroll")], cache_dir=tmp_path / "cache",
                       log=logs.append)
    srv = make_server(store, fake_page, port=0, log=logs.append)
    serve_in_thread(srv)
    srv.logs = logs
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=120) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_export_sampler_writes_the_sidecar_equal_to_the_embedded_description(tmp_path, swissroll):
    den = SE.load_denoiser(swissroll.onnx_path)
    res = SE.export_sampler_graph(den, swissroll.manifest, swissroll.spec, SamplerSpec("ddpm", 5),
                                  tmp_path / "s.onnx", "step")
    side = tmp_path / "s.json"
    assert SE.sidecar_path(res.path) == side and res.summary()["sidecar"] == str(side)
    embedded = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}[SE.SAMPLER_KEY]
    assert json.loads(side.read_text()) == json.loads(embedded) == res.description
    assert res.description["sample_shape"] == [2] and res.description["graph"] == "step"


def test_server_serves_the_page_with_isolation_headers(server, fake_page):
    for path in ("", "index.html", "app.js", "ort/ort.min.mjs", "ort/ort-wasm-simd-threaded.jsep.wasm"):
        status, headers, _ = _get(server.url + path)
        assert status == 200, path
        for k, v in ISOLATION_HEADERS.items():
            assert headers[k] == v, (path, k)
    assert _get(server.url + "ort/ort-wasm-simd-threaded.jsep.wasm")[1]["Content-Type"] == "application/wasm"
    assert _get(server.url + "app.js")[1]["Content-Type"].startswith("text/javascript")


@pytest.mark.parametrize("path", ["package.json", "../secret.js", "ort/../../x.mjs", "ort/%2e%2e%2fapp.js",
                                  ".hidden.js", "node_modules/onnxruntime-web/package.json", "missing.js"])
def test_server_serves_nothing_outside_the_page(server, path):
    status, headers, body = _get(server.url + path)
    assert status == 404 and body.decode().startswith("no such file"), (path, status, body)
    assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


def test_models_catalog(server):
    status, _, body = _get(server.url + "api/models")
    cat = json.loads(body)
    assert status == 200 and cat["ort"] == "1.30.0"
    (m,) = cat["models"]
    assert m["name"] == "swissroll" and m["kind"] == "points" and m["sample_shape"] == [2]
    assert m["default"] == {"sampler": "ddpm", "steps": 40}
    by_name = {s["name"]: s for s in m["samplers"]}
    assert by_name["ddim"]["deterministic"] and not by_name["ddpm"]["deterministic"]
    assert [by_name[n]["history"] for n in ("ddim", "dpmpp-2m", "unipc")] == [0, 1, 2]
    assert "ipndm" not in by_name  # swissroll clips x0, which ipndm refuses


def test_graph_is_exported_once_and_matches_its_sidecar(server, tmp_path):
    q = "?model=swissroll&sampler=ddim&steps=6&graph=loop"
    status, _, desc = _get(server.url + "graph.json" + q)
    assert status == 200, desc
    status, _, graph = _get(server.url + "graph.onnx" + q)
    assert status == 200
    model = onnx.load_from_string(graph)
    embedded = {p.key: p.value for p in model.metadata_props}[SE.SAMPLER_KEY]
    assert json.loads(desc) == json.loads(embedded)
    assert json.loads(desc)["graph"] == "loop" and json.loads(desc)["steps"] == 6
    assert sum("exported swissroll ddim 6-step loop" in line for line in server.logs) == 1  # cached after
    # the served graph samples: one Run equals the Python loop on the same x_T
    import onnxruntime as ort

    b = server.store.models["swissroll"].bundle
    x = np.random.default_rng(0).standard_normal((5, 2), dtype=np.float32)
    plan = b.spec.plan(b.spec.sampler(6, sampler="ddim"))
    got = SE.run_fused(ort.InferenceSession(graph, providers=["CPUExecutionProvider"]), "loop", plan, x, None)
    ref = SE.reference_loop(str(b.onnx_path), plan, x, np.zeros((6, 5, 2), np.float32))
    assert np.max(np.abs(got - ref)) <= 1e-5


@pytest.mark.parametrize(("query", "status", "needle"), [
    ("model=nope&sampler=ddim&steps=5&graph=step", 404, "unknown model 'nope'; this server has swissroll"),
    ("model=swissroll&sampler=direct&steps=5&graph=step", 400, "swissroll samples with ddim, ddpm"),
    ("model=swissroll&sampler=ddpm&steps=5&graph=loop", 400, "full-loop graph needs a deterministic sampler"),
    ("model=swissroll&sampler=ddim&steps=0&graph=step", 400, "steps must be in [1, 1000]"),
    ("model=swissroll&sampler=ddim&steps=x&graph=step", 400, "steps must be an integer"),
    ("model=swissroll&sampler=ddim&steps=5&graph=both", 400, "unknown graph kind 'both'"),
    ("model=swissroll&sampler=ddim&steps=5", 400, "exactly one graph="),
])
def test_bad_graph_requests_get_one_line(server, query, status, needle):
    got, headers, body = _get(server.url + "graph.json?" + query)
    text = body.decode()
    assert got == status and needle in text and text.count("\n") == 1, (got, text)
    assert headers["Content-Type"].startswith("text/plain")


def test_graph_request_parsing():
    query = {"model": ["digits"], "sampler": ["unipc"], "steps": ["15"], "graph": ["step"]}
    req = GraphRequest.from_query(query)
    assert req == GraphRequest("digits", "unipc", 15, "step") and not req.edit
    assert GraphRequest.from_query({**query, "edit": ["1"]}) == GraphRequest("digits", "unipc", 15, "step", edit=True)
    assert not GraphRequest.from_query({**query, "edit": ["0"]}).edit
    with pytest.raises(ConfigError, match="exactly one model="):
        GraphRequest.from_query({"model": ["a", "b"], "sampler": ["x"], "steps": ["1"], "graph": ["step"]})
    with pytest.raises(ConfigError, match=r"edit must be given at most once, as 0 or 1, got \['yes'\]"):
        GraphRequest.from_query({**query, "edit": ["yes"]})


def test_conditional_model_catalog_and_guided_edit_graphs(tmp_path, fake_page, swissroll):
    """A conditional bundle: the catalog names its classes, null label and default guidance; its graphs
    are guided, and edit=1 serves the edit variant (a full-loop one even for a stochastic sampler)."""
    from ddpm_rt.conditioning import CondInput
    from ddpm_rt.schedule import ScheduleSpec
    from ddpm_rt.spec import DiffusionSpec
    from tests.helpers.graphs import tiny_bundle

    spec = DiffusionSpec(ScheduleSpec(kind="linear", num_train_timesteps=100), "epsilon", (1, 4, 4),
                         clip=(-1.0, 1.0), sampler_defaults={"guidance_scale": 2.5},
                         conditioning=(CondInput("class_labels", "class", num_classes=3, null=3),))
    logs: list[str] = []
    store = GraphStore([WebModel("cond", tiny_bundle(tmp_path / "cond", spec), "test:cond"),
                        WebModel("swissroll", swissroll, "builtin:swissroll")], cache_dir=tmp_path / "cache",
                       log=logs.append)
    srv = make_server(store, fake_page, port=0)
    serve_in_thread(srv)
    try:
        cat = {m["name"]: m for m in json.loads(_get(srv.url + "api/models")[2])["models"]}
        assert cat["cond"]["conditioning"] == [{"name": "class_labels", "kind": "class", "dtype": "int64",
                                                "shape": [], "num_classes": 3, "null": 3}]
        assert cat["cond"]["guidance"] == 2.5
        assert cat["swissroll"]["conditioning"] == [] and cat["swissroll"]["guidance"] is None
        names = {}
        for query in ("model=cond&sampler=ddpm&steps=6&graph=step", "model=cond&sampler=ddpm&steps=6&graph=loop&edit=1"):
            status, _, body = _get(srv.url + "graph.json?" + query)
            assert status == 200, body
            desc = json.loads(body)
            names[query] = [i["name"] for i in desc["inputs"]]
            assert desc["guided"] and desc["default_guidance"] == 2.5
        assert names["model=cond&sampler=ddpm&steps=6&graph=step"] == [
            "x", "step", "noise", "class_labels", "guidance_scale", "guidance_rescale"]
        assert names["model=cond&sampler=ddpm&steps=6&graph=loop&edit=1"] == [
            "x_init", "class_labels", "guidance_scale", "guidance_rescale", "start", "image", "mask", "noise"]
        assert any("exported cond ddpm 6-step guided edit loop graph" in line for line in logs), logs
        assert len(list((tmp_path / "cache").glob("cond-ddpm-6-loop-edit-*.onnx"))) == 1
        # without edit=1 a stochastic sampler still has no full-loop graph
        status, _, body = _get(srv.url + "graph.json?model=cond&sampler=ddpm&steps=6&graph=loop")
        assert status == 400 and b"full-loop graph needs a deterministic sampler" in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_two_models_with_one_name_are_refused(swissroll):
    with pytest.raises(ConfigError, match="share a name"):
        GraphStore([WebModel("a", swissroll, "x"), WebModel("a", swissroll, "y")])


def test_page_checks(tmp_path, monkeypatch, fake_page):
    with pytest.raises(ConfigError, match="is not the ddpm-rt web page"):
        find_page(tmp_path / "nowhere")
    assert find_page() == Path(__file__).resolve().parents[2] / "examples" / "web"
    # no node_modules and no npm: one line naming the fix
    root = tmp_path / "p"
    root.mkdir()
    for name in PAGE_FILES:
        (root / name).write_text("{}\n")
    (root / "package.json").write_text(json.dumps({"dependencies": {"onnxruntime-web": "1.30.0"}}))
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setenv("DDPM_RT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"npm is not installed: install Node.js and npm, then run `npm ci`"):
        ensure_page(root)


def test_port_in_use_and_missing_page_are_one_line(tmp_path, fake_page):
    env = {"DDPM_RT_CACHE": str(tmp_path / "cache")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = str(s.getsockname()[1])
        proc = run_cli("web", "swissroll", "--port", port, "--page", str(fake_page.root), env=env)
    assert_one_line_error(proc, f"port {port} on 127.0.0.1 is in use; pass --port N")
    proc = run_cli("web", "swissroll", "--page", str(tmp_path / "none"), env=env)
    assert_one_line_error(proc, "is not the ddpm-rt web page", "--page")
    assert proc.returncode == 2


def test_unknown_model_is_one_line(tmp_path):
    proc = run_cli("web", "no-such-model", env={"DDPM_RT_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, "model source 'no-such-model' not found")
    assert proc.returncode == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_command_serves_and_exports_without_torch(tmp_path, fake_page):
    """The real command in a subprocess: serve swissroll, fetch a graph (exported on first use),
    then check that neither torch nor anything that imports it was loaded; SIGINT stops it (130)."""
    port = _free_port()
    code = f"""
import os, signal, sys, threading, time, urllib.request
from ddpm_rt.cli import main

def client():
    base = "http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "api/models", timeout=5).read()
            break
        except OSError:
            time.sleep(0.1)
    body = urllib.request.urlopen(base + "graph.json?model=swissroll&sampler=ddim&steps=4&graph=loop",
                                  timeout=120).read()
    bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxscript", "diffusers"))
    print("GRAPH", len(body), "LOADED", bad, flush=True)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=client, daemon=True).start()
main(["web", "swissroll", "--port", "{port}", "--page", {str(fake_page.root)!r}])
"""
    env = {**os.environ, "DDPM_RT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert f"serving swissroll at http://127.0.0.1:{port}/" in proc.stdout, proc.stdout
    assert "LOADED []" in proc.stdout and "GRAPH 0" not in proc.stdout, proc.stdout + proc.stderr
    assert "exported swissroll ddim 4-step loop graph" in proc.stderr
    assert list((tmp_path / "cache" / "web").glob("swissroll-ddim-4-loop-*.onnx"))
