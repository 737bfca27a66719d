"""TensorRT engines from a bundle's ONNX, with the TensorRT Python API (no shell-outs).

Lifecycle (after TensorRT's demo/Diffusion engine.py, minus its polygraphy shell-out):
parse the ONNX into a network -> builder config (precision, layers kept in fp32,
optimisation profile over a batch range, timing cache, optimisation level) ->
``build_serialized_network`` -> the engine cache (``engine_cache.py``) stores the plan.

The pure parts (profile shapes, the fp32-kept layer choice, the build config) need
neither torch nor tensorrt and are unit-tested everywhere; `build_engine` and
`ensure_engine` import tensorrt lazily and run only where a GPU is present.

Written against the TensorRT 10 Python API; not run in this project's CI (no GPU).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_rt.bundle.contract import CONTRACT, GraphContract
from ddpm_rt.errors import BundleError, ConfigError
from ddpm_rt.fsutil import atomic_write_bytes, cache_root
from ddpm_rt.gpu.availability import require_tensorrt
from ddpm_rt.gpu.engine_cache import (
    CachedEngine,
    EngineCache,
    EngineMeta,
    LogFn,
    file_lock,
    timing_cache_name,
)
from ddpm_rt.precision import Precision

OPT_LEVELS = range(0, 6)  # TensorRT builder_optimization_level: 0 fastest build .. 5 most search
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default


ENGINE_PRECISIONS = (Precision.FP32, Precision.FP16, Precision.BF16)  # int8 engines are not built here


# Layer types that stay fp32 in fp16/bf16 engines: their internal sums (mean/variance
# of a GroupNorm, exp-sums of a softmax, reductions) overflow or lose too much in fp16.
FP32_LAYER_TYPES = frozenset({"NORMALIZATION", "SOFTMAX", "REDUCE"})
# Name fragments of ONNX nodes that belong to a decomposed norm/softmax (older exports
# spell GroupNorm as ReduceMean/Sub/Pow/Sqrt/Div; the ONNX parser keeps node names).
FP32_NAME_HINTS = ("norm", "softmax")


def keep_fp32(layer_type: str, layer_name: str = "") -> bool:
    """Whether one layer (TensorRT layer-type name, e.g. "NORMALIZATION", and name) stays fp32."""
    kind = layer_type.rsplit(".", 1)[-1].upper()  # accept "LayerType.SOFTMAX" as well
    if kind in FP32_LAYER_TYPES:
        return True
    name = layer_name.lower()
    # elementwise/unary pieces of a decomposed norm or softmax, not its weights/constants
    return kind in ("ELEMENTWISE", "UNARY") and any(h in name for h in FP32_NAME_HINTS)


def layers_kept_fp32(layers: Iterable[tuple[str, str]], precision: Precision | str) -> list[int]:
    """Indices of (layer type name, layer name) pairs to pin to fp32; none for an fp32 engine."""
    if Precision.parse(precision) is Precision.FP32:
        return []
    return [i for i, (kind, name) in enumerate(layers) if keep_fp32(kind, name)]


def profile_shapes(
    sample_shape: Sequence[int],
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    contract: GraphContract = CONTRACT,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape of every graph input for a batch range: x [B, *sample], t [B]."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(
            "batch range must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
            f"{min_batch} / {opt_batch} / {max_batch}"
        )
    if not sample_shape or min(sample_shape) < 1:
        raise ConfigError(f"sample shape must be non-empty and positive, got {tuple(sample_shape)}")
    by_batch = [contract.shapes(tuple(sample_shape), b) for b in (min_batch, opt_batch, max_batch)]
    return {name: tuple(s[name] for s in by_batch) for name in contract.input_names}  # type: ignore[misc]


@dataclass(frozen=True)
class BuildConfig:
    """How to build one engine."""

    precision: Precision = Precision.FP32
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 16
    opt_level: int = DEFAULT_OPT_LEVEL
    workspace_mib: int | None = None  # builder workspace pool limit; None = TensorRT default

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        if self.precision not in ENGINE_PRECISIONS:
            raise ConfigError(f"TensorRT engines are built at fp32, fp16 or bf16, got --precision {self.precision}")
        if self.opt_level not in OPT_LEVELS:
            raise ConfigError(f"--opt-level must be 0..5 (TensorRT builder optimisation level), got {self.opt_level}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ConfigError(f"--workspace-mib must be >= 1, got {self.workspace_mib}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(
                "batch range must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                f"{self.min_batch} / {self.opt_batch} / {self.max_batch}"
            )


@dataclass(frozen=True)
class TrtEnvironment:
    trt_version: str
    gpu_name: str
    compute_capability: str


def trt_environment(device: int = 0) -> TrtEnvironment:
    """TensorRT version and the GPU it builds for (imports tensorrt and torch)."""
    require_tensorrt()
    import tensorrt as trt
    import torch

    props = torch.cuda.get_device_properties(device)
    return TrtEnvironment(trt.__version__, props.name, f"{props.major}.{props.minor}")


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress_monitor(trt: Any, log: LogFn) -> Any | None:
    """A TensorRT IProgressMonitor that logs phase starts/ends, if this TensorRT has one (>= 10.0)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            if parent_phase is None:  # top-level phases only: a readable trace
                log(f"  trt: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            self._steps.pop(phase_name, None)

    return _Monitor()


def _pin_fp32_layers(trt: Any, network: Any, precision: Precision, log: LogFn) -> int:
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    chosen = layers_kept_fp32(((layer.type.name, layer.name) for layer in layers), precision)
    for i in chosen:
        layer = layers[i]
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == trt.float32:
                layer.set_output_type(j, trt.float32)
    if chosen:
        log(f"  keeping {len(chosen)} of {len(layers)} layers in fp32 (normalisation / softmax / reduce)")
    return len(chosen)


def build_engine(
    onnx_path: Path,
    sample_shape: Sequence[int],
    cfg: BuildConfig,
    *,
    timing_cache: Path | None = None,
    log: LogFn = _log_stderr,
    contract: GraphContract = CONTRACT,
) -> bytes:
    """Parse `onnx_path` and build a serialized engine for `cfg` (GPU + tensorrt required)."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown parser error'}")
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(contract.input_names):
        raise BundleError(
            f"{onnx_path} has inputs {sorted(names)}, the contract wants {list(contract.input_names)}; re-export it"
        )

    config = builder.create_builder_config()
    config.builder_optimization_level = cfg.opt_level
    if cfg.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    if cfg.precision is Precision.FP32:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 is on by default
    else:
        config.set_flag(trt.BuilderFlag.FP16 if cfg.precision is Precision.FP16 else trt.BuilderFlag.BF16)
        if _pin_fp32_layers(trt, network, cfg.precision, log):
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(
        sample_shape, cfg.min_batch, cfg.opt_batch, cfg.max_batch, contract
    ).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    monitor = _progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor

    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    log(
        f"building TensorRT {trt.__version__} engine: {cfg.precision.value}, batch "
        f"{cfg.min_batch}..{cfg.opt_batch}..{cfg.max_batch}, opt level {cfg.opt_level}"
        + (f", timing cache {timing_cache} ({len(cache_bytes)} bytes)" if timing_cache else "")
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache)
    return bytes(serialized)


def _save_timing_cache(config: Any, path: Path) -> None:
    # merge with whatever another build wrote meanwhile, then replace atomically
    with file_lock(path.with_name(path.name + ".lock")):
        ours = config.get_timing_cache()
        if path.exists():
            theirs = config.create_timing_cache(path.read_bytes())
            ours.combine(theirs, False)
        atomic_write_bytes(path, bytes(ours.serialize()))


@dataclass(frozen=True)
class BundleFacts:
    """What a build needs from a bundle."""

    directory: Path
    onnx_path: Path
    onnx_sha256: str
    sample_shape: tuple[int, ...]


def bundle_facts(bundle_dir: Path) -> BundleFacts:
    """Load and verify a bundle (format, hash) and return its ONNX path, hash and sample shape."""
    from ddpm_rt.bundle.load import load_bundle

    bundle = load_bundle(Path(bundle_dir))
    return BundleFacts(Path(bundle.directory), Path(bundle.onnx_path), bundle.onnx_sha256,
                       tuple(bundle.spec.sample_shape))


def engine_cache_for(facts: BundleFacts, cache_dir: Path | None) -> EngineCache:
    """<bundle>/engines, or <cache_dir>/engines/<onnx hash> when a cache dir is given."""
    if cache_dir is None:
        return EngineCache.for_bundle(facts.directory)
    return EngineCache(Path(cache_dir) / "engines" / facts.onnx_sha256[:16])


def timing_cache_path(env: TrtEnvironment, cache_dir: Path | None) -> Path:
    """The timing cache shared by every build for this TensorRT version and GPU."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / "trt" / timing_cache_name(env.trt_version, env.gpu_name, env.compute_capability)


def ensure_engine(
    bundle_dir: Path,
    cfg: BuildConfig,
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    reuse_covering: int | None = None,
    log: LogFn = _log_stderr,
) -> CachedEngine:
    """The engine for `bundle_dir` and `cfg`: cached when valid, else built (once) and cached.

    reuse_covering: a batch size; any valid cached engine of the same bundle, GPU,
    TensorRT, precision and opt level whose batch range covers it is used as is.
    """
    require_tensorrt()
    facts = bundle_facts(bundle_dir)
    env = trt_environment()
    meta = EngineMeta(
        onnx_sha256=facts.onnx_sha256,
        trt_version=env.trt_version,
        gpu_name=env.gpu_name,
        compute_capability=env.compute_capability,
        precision=cfg.precision.value,
        min_batch=cfg.min_batch,
        opt_batch=cfg.opt_batch,
        max_batch=cfg.max_batch,
        opt_level=cfg.opt_level,
    )
    cache = engine_cache_for(facts, cache_dir)
    if reuse_covering is not None and not force:
        found = cache.find_covering(meta, reuse_covering)
        if found is not None:
            return found
    timing = timing_cache_path(env, cache_dir)
    return cache.get_or_build(
        meta,
        lambda: build_engine(facts.onnx_path, facts.sample_shape, cfg, timing_cache=timing, log=log),
        log=log,
        force=force,
    )
