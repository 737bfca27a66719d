"""ONNX Runtime backends: CPU (IO binding on numpy buffers), CUDA EP and TensorRT EP.

One `InferenceSession` per bundle. Inputs ``x``, ``t`` (and any conditioning inputs the bundle
declares, e.g. ``class_labels``) and the output ``out`` are bound once to `OrtValue`s; on CPU these wrap numpy arrays without a copy, so the shared host
loop's own ``x`` and ``t`` buffers *are* the graph inputs: the first call of a loop binds
them, every later step only calls ``run_with_iobinding`` and the model writes straight
into our preallocated output. No allocation per step (tests/cpu/test_ort_backend.py).

Session settings are explicit: ``intra_op_num_threads = BackendOptions.threads`` (0 = ORT's
default, one per physical core), one inter-op thread, sequential execution, and
``ORT_ENABLE_ALL`` on top of the cached ``ORT_ENABLE_EXTENDED`` graph (runtime.ort_cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.bundle.contract import CONTRACT, ORT_DTYPES, GraphContract, check_io
from ddpm_rt.bundle.load import Bundle
from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import BackendUnavailable, BundleError, ConfigError, first_line
from ddpm_rt.runtime.backend import Backend, BackendOptions

if TYPE_CHECKING:
    import onnxruntime as ort


def check_session_io(session: Any, sample_shape: tuple[int, ...], batch: int, where: str,
                     contract: GraphContract = CONTRACT, feature: str | None = None) -> None:
    """The contract check (`bundle.contract.check_io`) on an ORT session, and its batch against ours
    (`feature`: the feature-cache tensor a cache graph has besides the contract's, not checked here)."""
    def describe(values: list[Any]) -> dict[str, tuple[str, list[Any]]]:
        return {v.name: (ORT_DTYPES.get(v.type, v.type), list(v.shape)) for v in values if v.name != feature}

    fixed = check_io(describe(session.get_inputs()), describe(session.get_outputs()), sample_shape, where,
                     contract)
    if fixed is not None and fixed != batch:
        raise ConfigError(f"{where} has a static batch of {fixed}; use --batch {fixed}, or re-export "
                          "it with `ddpm-rt export` (dynamic batch)")


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
    onnxruntime.set_default_logger_severity(3)  # errors only: ORT's own log lines never reach the terminal
    return onnxruntime


def _provider_missing(provider: str, hint: str) -> str | None:
    try:
        ort = _import_ort()
    except BackendUnavailable as e:
        return str(e)
    if provider not in ort.get_available_providers():
        return f"onnxruntime has no {provider} on this machine; {hint}"
    return None


class OrtCpuBackend(Backend):
    """ONNX Runtime on CPU with IO binding over numpy buffers it owns (or the loop's own)."""

    name = "ort"
    device = "cpu"
    provider = "CPUExecutionProvider"

    def __init__(self, session: ort.InferenceSession, batch: int, sample_shape: tuple[int, ...],
                 info: dict[str, Any], where: str = "the graph",
                 conditioning: tuple[CondInput, ...] = (), contract: GraphContract = CONTRACT,
                 shallow: ort.InferenceSession | None = None, feature: tuple[str, tuple[int, ...]] | None = None,
                 ) -> None:
        self.session = session
        # feature caching (`export --feature-cache`): `session` is then the full graph that also
        # writes the deep feature, `shallow` the graph that reads it back; one feature buffer
        self.shallow = shallow
        self.feature_name, self.feature_shape = feature if feature is not None else ("", ())
        self.batch = batch
        self.sample_shape = tuple(sample_shape)
        self.info = info  # model path, cache status, session settings (reported by bench)
        self.contract = contract.for_conditioning(conditioning)
        self.conditioning = tuple(conditioning)
        self.x_name, self.t_name, self.out_name = contract.x_name, contract.t_name, contract.out_name
        self._check_io(where)
        self._binding = session.io_binding()
        self._shallow_binding = shallow.io_binding() if shallow is not None else None
        self._alloc_buffers()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _provider_missing(cls.provider, "pip install onnxruntime")

    @classmethod
    def providers(cls, onnx_path: Path, batch: int, sample_shape: tuple[int, ...],
                  options: BackendOptions, cache: Path) -> list[Any]:
        return [cls.provider]

    @classmethod
    def session_options(cls, options: BackendOptions) -> ort.SessionOptions:
        ort = _import_ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(options.threads or 0)  # 0 = ORT default (physical cores)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        spin = options.extra.get("allow_spinning")
        if spin is not None:  # busy-waiting workers: faster alone, worse on a shared machine
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        return so

    @classmethod
    def cache_graph(cls) -> bool:
        """Whether ORT's optimized graph may be saved and reused for this provider."""
        return True

    @classmethod
    def open(cls, bundle: Bundle, batch: int, options: BackendOptions) -> OrtCpuBackend:
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend {cls.name!r} is unavailable: {reason}")
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        if bundle.fixed_batch is not None and batch != bundle.fixed_batch:
            raise ConfigError(f"{bundle.onnx_path} was exported for batch {bundle.fixed_batch} only; "
                              f"use --batch {bundle.fixed_batch}, or re-export it with a dynamic batch")
        if options.precision not in ("fp32", bundle.precision):
            cls.check_precision(options.precision)
        ort = _import_ort()
        from ddpm_rt.runtime import ort_cache

        onnx_path, shallow_path, feature = bundle.graphs_to_open(bool(options.feature_cache))
        cache = ort_cache.cache_dir_for(onnx_path, options.cache_dir)
        providers = cls.providers(onnx_path, batch, bundle.spec.sample_shape, options, cache)
        so = cls.session_options(options)

        def session_for(path: Path) -> tuple[Any, Path, str]:
            model_path, status = path, "disabled"
            if cls.cache_graph() and options.extra.get("graph_cache", True):
                model_path, status = ort_cache.optimized_model(
                    path, cls.provider, providers, cache_dir=options.cache_dir)
            try:
                return ort.InferenceSession(str(model_path), so, providers=providers), model_path, status
            except Exception as e:  # noqa: BLE001 - ORT raises its own untyped errors
                raise BundleError(f"onnxruntime cannot load {model_path}: {first_line(e)}") from None

        session, model_path, status = session_for(onnx_path)
        shallow = session_for(shallow_path)[0] if shallow_path is not None else None
        info = {
            "onnx": str(onnx_path),
            "model": str(model_path),
            "graph_cache": status,
            "providers": session.get_providers(),
            "intra_op_threads": so.intra_op_num_threads,
            "inter_op_threads": so.inter_op_num_threads,
            "optimization": "extended (cached) + all" if status != "disabled" else "all",
            "onnxruntime": ort.__version__,
        }
        if shallow is not None:
            info["feature_cache"] = {"shallow": str(shallow_path), "feature_shape": list(feature[1])}
        return cls(session, batch, bundle.spec.sample_shape, info, where=str(onnx_path),
                   conditioning=bundle.spec.conditioning, shallow=shallow, feature=feature)

    @classmethod
    def check_precision(cls, precision: str) -> None:
        if precision != "fp32":
            raise ConfigError(
                f"backend {cls.name!r} runs fp32 only, got --precision {precision}; "
                "use fp32 (or an int8 bundle from `ddpm-rt export --precision int8`), openvino for bf16/fp16, "
                "or ort-trt / trt on a GPU"
            )

    def _check_io(self, where: str) -> None:
        check_session_io(self.session, self.sample_shape, self.batch, where, self.contract, self.feature_name or None)
        if self.shallow is not None:
            check_session_io(self.shallow, self.sample_shape, self.batch, where, self.contract, self.feature_name)

    # -- buffers ---------------------------------------------------------------------------

    def _alloc_buffers(self) -> None:
        ort = _import_ort()
        shape = (self.batch, *self.sample_shape)
        # used when a caller's arrays can't be bound: x (B, ...), t (B,), each conditioning input
        self._own = (np.zeros(shape, np.float32), np.zeros((self.batch,), np.float32),
                     *(np.zeros((self.batch, *c.shape), c.np_dtype) for c in self.conditioning))
        self._out = np.zeros(shape, dtype=np.float32)  # (B, ...) the model writes here
        self._out_ov = {self.batch: ort.OrtValue.ortvalue_from_numpy(self._out)}
        # the cached deep feature (B, C_f, H_f, W_f): written by a full call, read by the shallow ones
        self._feat = np.zeros((self.batch, *self.feature_shape), np.float32) if self.shallow is not None else None
        self._feat_ov: dict[int, Any] = {}
        self._bound: tuple[np.ndarray, ...] | None = None  # the arrays bound as inputs (x, t, *cond)
        self._bind(self._own)
        self._own_bound = self.batch

    def _bind(self, inputs: tuple[np.ndarray, ...]) -> None:
        """Bind the inputs (zero copy: OrtValues over these very arrays) and the output slice of their batch."""
        ort = _import_ort()
        b = inputs[0].shape[0]
        if b not in self._out_ov:
            self._out_ov[b] = ort.OrtValue.ortvalue_from_numpy(self._out[:b])
        for name, array in zip(self.contract.input_names, inputs, strict=True):
            self._binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        self._binding.bind_ortvalue_output(self.out_name, self._out_ov[b])
        if self._shallow_binding is not None:
            assert self._feat is not None
            if b not in self._feat_ov:
                self._feat_ov[b] = ort.OrtValue.ortvalue_from_numpy(self._feat[:b])
            self._binding.bind_ortvalue_output(self.feature_name, self._feat_ov[b])
            for name, array in zip(self.contract.input_names, inputs, strict=True):
                self._shallow_binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
            self._shallow_binding.bind_ortvalue_input(self.feature_name, self._feat_ov[b])
            self._shallow_binding.bind_ortvalue_output(self.out_name, self._out_ov[b])
        self._bound = inputs  # holding the arrays keeps the identity test below sound
        self._bound_out = self._out[:b]  # one view, made here: returned by every call
        self._own_bound = 0

    def _bindable(self, inputs: tuple[np.ndarray, ...]) -> bool:
        b = inputs[0].shape[0]
        dtypes = (np.float32, np.float32, *(c.np_dtype for c in self.conditioning))
        return all(a.dtype == d and a.flags.c_contiguous and a.flags.writeable and a.shape[:1] == (b,)
                   for a, d in zip(inputs, dtypes, strict=True))

    def _check_shape(self, inputs: tuple[np.ndarray, ...]) -> None:
        x, t, *cond = inputs
        b = x.shape[0] if x.ndim else 0
        if (x.shape[1:] != self.sample_shape or not 1 <= b <= self.batch or t.shape != (b,)
                or len(cond) != len(self.conditioning)
                or any(a.shape != (b, *c.shape) for a, c in zip(cond, self.conditioning, strict=False))):
            extra = "".join(f", {c.name} [B{''.join(f', {d}' for d in c.shape)}]" for c in self.conditioning)
            raise ConfigError(
                f"backend {self.name!r} was opened for x [<= {self.batch}, "
                f"{', '.join(map(str, self.sample_shape))}], t [B]{extra}; got "
                + ", ".join(str(list(np.shape(a))) for a in inputs)
            )

    def __call__(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        """out = f(x, t, *cond). The loop passes the same arrays every step: bound once, then reused."""
        inputs = (x, t, *cond)
        bound = self._bound
        if bound is None or len(bound) != len(inputs) or any(a is not c for a, c in zip(inputs, bound, strict=True)):
            self._check_shape(inputs)
            if self._bindable(inputs):
                self._bind(inputs)  # the caller's buffers become the graph inputs
            else:  # a foreign layout or dtype: copy into our own buffers every call
                self._copy_in(inputs)
                self._run_bound()
                return self._bound_out
        self._run_bound()
        return self._bound_out

    def cached(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        """out = shallow(x, t, *cond, feature of the last full call): a feature-cache row."""
        if self._shallow_binding is None:
            raise ConfigError(f"backend {self.name!r} was opened without the feature-cache graphs; "
                              "open it with BackendOptions(feature_cache=True)")
        inputs = (x, t, *cond)
        bound = self._bound
        if bound is None or len(bound) != len(inputs) or any(a is not c for a, c in zip(inputs, bound, strict=True)):
            self._check_shape(inputs)  # not the arrays of the last full call: ours, copied into
            self._copy_in(inputs)
        self._run_bound(self._shallow_binding, self.shallow)
        return self._bound_out

    def _copy_in(self, inputs: tuple[np.ndarray, ...]) -> None:
        """Copy `inputs` into our own bound buffers (bound once per batch size)."""
        b = inputs[0].shape[0]
        for own, given in zip(self._own, inputs, strict=True):
            np.copyto(own[:b], given, casting="same_kind")
        if self._own_bound != b:
            self._bind(tuple(own[:b] for own in self._own))
            self._own_bound = b
        self._bound = None

    def _run_bound(self, binding: Any = None, session: Any = None) -> None:
        try:
            (session or self.session).run_with_iobinding(binding or self._binding)
        except Exception as e:  # noqa: BLE001 - ORT's untyped runtime errors, as one line
            raise BundleError(f"onnxruntime failed running the denoiser: {first_line(e)}") from None

    def close(self) -> None:
        self._bound = None
        self._binding = None
        self._shallow_binding = None
        self.session = None
        self.shallow = None
