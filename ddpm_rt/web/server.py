"""The HTTP server of `ddpm-rt web`: the page, onnxruntime-web and the sampler graphs (standard library).

    GET /                          the page (examples/web/index.html), and its .js/.css beside it
    GET /api/models                the served models: shapes, data range, samplers, defaults,
                                   conditioning (classes, null label) and default guidance
    GET /graph.json?model=&sampler=&steps=&graph=[&edit=1]   a sampler graph's description (sidecar
                                   JSON; edit=1: the edit variant, inputs start, image, mask);
    GET /graph.onnx?...            and the graph — both exported on first use (`graphs.GraphStore`)
    GET /ort/<file>                onnxruntime-web's dist/ (the .mjs and .wasm builds)

Every response carries COOP ``same-origin`` + COEP ``require-corp`` (+ CORP), which make the
page cross-origin isolated: SharedArrayBuffer, hence WASM threads. An error is one line of
plain text with its status (404 unknown model or file, 400 bad request, 500 export failure),
which the page shows as it is.
"""

from __future__ import annotations

import email.utils
import errno
import json
import shutil
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ddpm_rt import __version__
from ddpm_rt.errors import ConfigError, DdpmRtError, ExportError, first_line
from ddpm_rt.fsutil import LogFn
from ddpm_rt.web.graphs import ONNX_HINT, GraphRequest, GraphStore, UnknownModelError
from ddpm_rt.web.page import Page

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".json": "application/json", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
    ".png": "image/png", ".svg": "image/svg+xml", ".ico": "image/x-icon",
}
PAGE_SUFFIXES = (".html", ".js", ".css", ".png", ".svg", ".ico")  # what the page folder may serve
ORT_SUFFIXES = (".mjs", ".wasm")


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebServer(ThreadingHTTPServer):
    """A threading HTTP server holding the page and the graph store."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], store: GraphStore, page: Page, log: LogFn | None) -> None:
        self.store, self.page, self.log = store, page, log
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        return f"http://{shown}:{port}/"


class Handler(BaseHTTPRequestHandler):
    server: WebServer
    protocol_version = "HTTP/1.1"
    server_version = f"ddpm-rt/{__version__}"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
        pass  # quiet: errors are logged by _serve

    # ------------------------------------------------------------------ routing
    def _serve(self, body: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        try:
            if path in ("/", "/index.html"):
                self._file(self.server.page.root / "index.html", body)
            elif path == "/api/models":
                self._bytes(json.dumps({"models": self.server.store.catalog(), "ort": self.server.page.ort_version,
                                        "ddpm_rt": __version__}).encode(), ".json", body)
            elif path in ("/graph.onnx", "/graph.json"):
                self._graph(parse_qs(url.query), path.endswith(".json"), body)
            elif path.startswith("/ort/"):
                self._file(self._inside(self.server.page.ort_dist, path[len("/ort/"):], ORT_SUFFIXES), body)
            else:
                self._file(self._inside(self.server.page.root, path.lstrip("/"), PAGE_SUFFIXES), body)
        except HttpError as e:
            self._error(e.status, str(e), body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-response
        except Exception as e:  # noqa: BLE001 - one request's failure must not stop the server
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"unexpected {type(e).__name__}: {first_line(e)}", body)

    def _inside(self, root: Path, name: str, suffixes: tuple[str, ...]) -> Path:
        """A plain file directly in `root` with an allowed suffix (no sub-folders, no traversal)."""
        if not name or "/" in name or "\\" in name or name.startswith(".") or not name.endswith(suffixes):
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such file: /{name}")
        path = root / name
        if not path.is_file():
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such file: /{name}")
        return path

    def _graph(self, query: dict[str, list[str]], description: bool, body: bool) -> None:
        try:
            req = GraphRequest.from_query(query)
            onnx_path, sidecar = self.server.store.graph(req)
        except UnknownModelError as e:
            raise HttpError(HTTPStatus.NOT_FOUND, str(e)) from None
        except ExportError as e:
            raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"export failed: {e}") from None
        except DdpmRtError as e:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(e)) from None
        except ImportError as e:
            raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR,
                            f"exporting the graph needs {e.name}: {ONNX_HINT}") from None
        self._file(sidecar if description else onnx_path, body)

    # ------------------------------------------------------------------ responses
    def _headers(self, status: HTTPStatus, suffix: str, length: int, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPES.get(suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-cache")  # revalidate: Last-Modified / If-Modified-Since
        for k, v in {**ISOLATION_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()

    def _bytes(self, data: bytes, suffix: str, body: bool) -> None:
        self._headers(HTTPStatus.OK, suffix, len(data))
        if body:
            self.wfile.write(data)

    def _file(self, path: Path, body: bool) -> None:
        st = path.stat()
        modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        since = self.headers.get("If-Modified-Since")
        if since is not None:
            try:
                fresh = int(st.st_mtime) <= email.utils.parsedate_to_datetime(since).timestamp()
            except (TypeError, ValueError):
                fresh = False
            if fresh:
                self._headers(HTTPStatus.NOT_MODIFIED, path.suffix, 0, {"Last-Modified": modified})
                return
        self._headers(HTTPStatus.OK, path.suffix, st.st_size, {"Last-Modified": modified})
        if body:
            with path.open("rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    def _error(self, status: HTTPStatus, message: str, body: bool) -> None:
        line = message.splitlines()[0] if message else status.phrase
        if self.server.log is not None:
            self.server.log(f"{self.command} {self.path} -> {status.value}: {line}")
        data = (line + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)


def make_server(store: GraphStore, page: Page, host: str = "127.0.0.1", port: int = 8000,
                log: LogFn | None = None) -> WebServer:
    """Bind the server (port 0: any free port); refuse in one line when the port is taken."""
    try:
        return WebServer((host, port), store, page, log)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use; pass --port N (0 picks a free port)") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def serve_in_thread(server: WebServer) -> threading.Thread:
    """Run `server` in a daemon thread (tests, benchmarks); stop it with server.shutdown()."""
    thread = threading.Thread(target=server.serve_forever, name="ddpm-rt-web", daemon=True)
    thread.start()
    return thread
