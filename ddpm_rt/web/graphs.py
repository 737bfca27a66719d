"""The models `ddpm-rt web` serves, and their sampler graphs, exported on first use.

A served model is a bundle (a built-in's shipped bundle, or any directory from `ddpm-rt
export`). The page asks for a graph by (model, sampler, steps, graph kind, edit); the first request
exports it with `export_sampler_graph` — the onnx package and ONNX Runtime, no torch — into
``$DDPM_RT_CACHE/web/``, with the sidecar description that the browser reads beside it. The
entry's key is the denoiser's sha256, the sampler spec, the graph kind, edit and the
ddpm-rt version; writers of one entry serialise on a lock, and the sidecar is written after the
graph, so a sidecar on disk means a finished entry.

A conditional model's graphs are guided (its conditioning inputs, guidance_scale and
guidance_rescale); ``edit=1`` asks for the edit variant (start, image, mask; a full-loop edit
graph also takes the per-step noise, so it is offered for stochastic samplers too).
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddpm_rt import __version__
from ddpm_rt.bundle.load import Bundle
from ddpm_rt.bundle.manifest import SAMPLER_GRAPH_VERSION
from ddpm_rt.errors import ConfigError
from ddpm_rt.fsutil import LogFn, cache_root, clean_stale_temps, file_lock
from ddpm_rt.plan import SAMPLERS_FOR_FAMILY
from ddpm_rt.sources.source import content_key

WEB_SUBDIR = "web"
GRAPH_KINDS = ("step", "loop")
MAX_STEPS = 1000  # a request above this is refused before any export (each graph holds one row per step)
ONNX_HINT = "pip install 'ddpm-rt[web]' (the onnx package; no torch)"


def check_exporter() -> None:
    """Refuse in one line when the onnx package, which builds the graphs, is missing."""
    if importlib.util.find_spec("onnx") is None:
        raise ConfigError(f"`ddpm-rt web` builds the sampler graphs with the onnx package, which the core "
                          f"install leaves out: {ONNX_HINT}")


class UnknownModelError(ConfigError):
    """The page asked for a model this server does not serve (HTTP 404)."""


@dataclass(frozen=True)
class GraphRequest:
    """One graph the page asked for."""

    model: str
    sampler: str
    steps: int
    graph: str  # step | loop
    edit: bool = False  # the edit variant: inputs start, image, mask (and the noise, full-loop)

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> GraphRequest:
        """From a URL query: model, sampler, steps, graph (each once), and optionally edit=0|1."""
        values = {}
        for key in ("model", "sampler", "steps", "graph"):
            got = query.get(key, [])
            if len(got) != 1 or not got[0]:
                raise ConfigError(f"the graph request needs exactly one {key}= (model, sampler, steps, graph)")
            values[key] = got[0]
        try:
            steps = int(values["steps"])
        except ValueError:
            raise ConfigError(f"steps must be an integer, got {values['steps']!r}") from None
        if not 1 <= steps <= MAX_STEPS:
            raise ConfigError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
        if values["graph"] not in GRAPH_KINDS:
            raise ConfigError(f"unknown graph kind {values['graph']!r}; choose {' or '.join(GRAPH_KINDS)}")
        edit = query.get("edit", ["0"])
        if len(edit) != 1 or edit[0] not in ("0", "1"):
            raise ConfigError(f"edit must be given at most once, as 0 or 1, got {edit}")
        return cls(values["model"], values["sampler"], steps, values["graph"], edit[0] == "1")


@dataclass(frozen=True)
class WebModel:
    """A bundle under the name the page shows."""

    name: str
    bundle: Bundle
    label: str

    def catalog_entry(self) -> dict[str, Any]:
        """What the page needs to offer this model: shape, range, samplers, defaults."""
        spec = self.bundle.spec
        default = spec.sampler()
        samplers = []
        for name in SAMPLERS_FOR_FAMILY[spec.schedule.family]:
            try:
                s = spec.sampler(sampler=name)
                plan = spec.plan(s)  # e.g. ipndm refuses a model that clips x0
            except ConfigError:
                continue
            samplers.append({"name": name, "deterministic": s.deterministic, "default_steps": s.steps,
                             "history": plan.depth})
        return {
            "name": self.name, "label": self.label,
            "kind": "image" if spec.is_image else "points",
            "sample_shape": list(spec.sample_shape), "data_range": list(spec.data_range),
            "samplers": samplers, "default": {"sampler": default.sampler, "steps": default.steps},
            "max_steps": min(spec.schedule.num_train_timesteps, MAX_STEPS),
            # a conditional model's graphs are guided: its inputs (class labels: classes and the null
            # label), and the guidance scale it samples with by default (sampler_defaults)
            "conditioning": [c.to_dict() for c in spec.conditioning],
            "guidance": spec.default_guidance if spec.conditional else None,
        }


class GraphStore:
    """The served models and the cache of their exported sampler graphs."""

    def __init__(self, models: list[WebModel], cache_dir: Path | None = None, log: LogFn | None = None) -> None:
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"two served models share a name: {names}; give each bundle its own directory name")
        self.models = {m.name: m for m in models}
        self.root = Path(cache_dir) if cache_dir is not None else cache_root() / WEB_SUBDIR
        self.log = log

    def catalog(self) -> list[dict[str, Any]]:
        return [m.catalog_entry() for m in self.models.values()]

    def model(self, name: str) -> WebModel:
        if name not in self.models:
            raise UnknownModelError(f"unknown model {name!r}; this server has {', '.join(self.models)}")
        return self.models[name]

    def _sampler(self, req: GraphRequest) -> Any:
        spec = self.model(req.model).bundle.spec
        allowed = SAMPLERS_FOR_FAMILY[spec.schedule.family]
        if req.sampler not in allowed:
            raise ConfigError(f"{req.model} samples with {', '.join(allowed)}, not {req.sampler!r}")
        return spec.sampler(req.steps, sampler=req.sampler)

    def key(self, req: GraphRequest) -> str:
        bundle = self.model(req.model).bundle
        return content_key({"denoiser": bundle.onnx_sha256, "spec": bundle.spec.to_dict(),
                            "sampler": asdict(self._sampler(req)), "graph": req.graph, "edit": req.edit,
                            "ddpm_rt": __version__, "builder": SAMPLER_GRAPH_VERSION})

    def graph(self, req: GraphRequest) -> tuple[Path, Path]:
        """(the .onnx, its sidecar .json) for `req`, exported now (once, under a lock) when absent."""
        key = self.key(req)[:24]
        kind = f"{req.graph}-edit" if req.edit else req.graph
        onnx_path = self.root / f"{req.model}-{req.sampler}-{req.steps}-{kind}-{key}.onnx"
        from ddpm_rt.exporter.sampler_export import sidecar_path  # onnx: checked by check_exporter

        side = sidecar_path(onnx_path)
        if side.is_file() and onnx_path.is_file():
            return onnx_path, side
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / f".{key}.lock", log=self.log, what=f"exporting {onnx_path.name}"):
            clean_stale_temps(self.root)
            if not (side.is_file() and onnx_path.is_file()):  # another request may have made it meanwhile
                self._export(req, onnx_path)
        return onnx_path, side

    def _export(self, req: GraphRequest, out: Path) -> None:
        from ddpm_rt.exporter.sampler_export import export_sampler_graph, load_denoiser

        b = self.model(req.model).bundle
        t0 = time.perf_counter()
        res = export_sampler_graph(load_denoiser(b.onnx_path), b.manifest, b.spec, self._sampler(req), out, req.graph,
                                   edit=req.edit)
        if self.log is not None:
            what = ("guided " if b.spec.conditional else "") + ("edit " if req.edit else "")
            self.log(f"exported {req.model} {req.sampler} {req.steps}-step {what}{req.graph} graph in "
                     f"{time.perf_counter() - t0:.1f} s (max |graph - Python loop| {res.max_abs_diff:.1e})")
