"""`ddpm-rt web`: serve the in-browser sampler page (examples/web) and the models' sampler graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def web(
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="Models to serve: built-in names or bundles from `ddpm-rt export` (default: every "
                       "built-in that ships a bundle).", show_default=False),
    ] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on. Browsers treat only localhost/127.0.0.1 "
                                      "over plain HTTP as secure, which WebGPU and WASM threads need.")] = "127.0.0.1",
    page: Annotated[Path | None, typer.Option(help="The page's folder (default: examples/web of the source "
                                               "tree).")] = None,
) -> None:
    """Serve a page that samples in the browser (onnxruntime-web: WebGPU, or WASM with threads); prints its URL.

    SOURCES are built-in names or bundles (default: every built-in that ships a bundle). Sampler
    graphs are exported on first use into the cache ($DDPM_RT_CACHE/web) with the onnx package;
    nothing here needs torch for a model that ships a bundle.
    """
    from ddpm_rt.models.catalog import BUILTIN, shipped_bundle
    from ddpm_rt.prepare import bundle_for
    from ddpm_rt.sources import resolve_source
    from ddpm_rt.sources.source import SourceKind
    from ddpm_rt.web.graphs import GraphStore, WebModel, check_exporter
    from ddpm_rt.web.page import ensure_page
    from ddpm_rt.web.server import make_server

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    check_exporter()
    names = sources or [n for n in BUILTIN if shipped_bundle(n) is not None]
    models = []
    for name in names:
        src = resolve_source(name)
        for note in src.notes:
            log(f"warning: {note}")
        bundle = bundle_for(src, log=log)
        # a built-in's name, else the bundle's folder (or a bare .onnx file's stem)
        shown = (src.ref if src.kind is SourceKind.BUILTIN
                 else bundle.directory.name if bundle.hash_checked else bundle.onnx_path.stem)
        models.append(WebModel(shown, bundle, src.label))
    store = GraphStore(models, log=log)
    served = ensure_page(page, log=log)
    server = make_server(store, served, host, port, log=log)
    try:
        typer.echo(f"serving {', '.join(store.models)} at {server.url} (onnxruntime-web {served.ort_version}; "
                   "Ctrl-C stops)")
        server.serve_forever()
    finally:
        server.server_close()
