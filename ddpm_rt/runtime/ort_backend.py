"""ONNX Runtime backends: CPU (IO binding on numpy buffers), CUDA EP and TensorRT EP.

One `InferenceSession` per bundle. Inputs ``x``, ``t`` and the output ``out`` are bound
once to `OrtValue`s; on CPU these wrap numpy arrays without a copy, so the shared host
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

from ddpm_rt.errors import BackendUnavailable, BundleError, ConfigError
from ddpm_rt.runtime.backend import Backend, BackendOptions

if TYPE_CHECKING:
    import onnxruntime as ort

    from ddpm_rt.source import ModelSource

GPU_HINT = "install onnxruntime-gpu: pip install 'ddpm-rt[ort-gpu]'"


def _contract_names() -> tuple[str, str, str]:
    from ddpm_rt.exporter.contract import CONTRACT

    return CONTRACT.x_name, CONTRACT.t_name, CONTRACT.out_name


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
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
                 info: dict[str, Any]) -> None:
        self.session = session
        self.batch = batch
        self.sample_shape = tuple(sample_shape)
        self.info = info  # model path, cache status, session settings (reported by bench)
        self.x_name, self.t_name, self.out_name = _contract_names()
        self._check_io()
        self._binding = session.io_binding()
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
    def open(cls, source: ModelSource, batch: int, options: BackendOptions) -> OrtCpuBackend:
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend {cls.name!r} is unavailable: {reason}")
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        cls.check_precision(options.precision)
        ort = _import_ort()
        from ddpm_rt.runtime import ort_cache

        bundle = Path(source.bundle_dir(Path(options.cache_dir) if options.cache_dir else None))
        onnx_path = bundle / "denoiser.onnx"
        if not onnx_path.is_file():
            raise BundleError(f"bundle {bundle} has no denoiser.onnx; re-run `ddpm-rt export`")
        cache = ort_cache.cache_dir_for(onnx_path, options.cache_dir)
        providers = cls.providers(onnx_path, batch, source.spec.sample_shape, options, cache)
        model_path, status = onnx_path, "disabled"
        if cls.cache_graph() and options.extra.get("graph_cache", True):
            model_path, status = ort_cache.optimized_model(
                onnx_path, cls.provider, providers, cache_dir=options.cache_dir)
        so = cls.session_options(options)
        try:
            session = ort.InferenceSession(str(model_path), so, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own untyped errors
            raise BundleError(f"onnxruntime cannot load {model_path}: {e}") from None
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
        return cls(session, batch, source.spec.sample_shape, info)

    @classmethod
    def check_precision(cls, precision: str) -> None:
        if precision != "fp32":
            raise ConfigError(
                f"backend {cls.name!r} runs fp32 only, got --precision {precision}; "
                "use fp32, or ort-trt / trt for fp16"
            )

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != {self.x_name, self.t_name} or outputs != [self.out_name]:
            raise BundleError(
                f"the denoiser graph has inputs {sorted(inputs)} and outputs {outputs}; expected "
                f"inputs ['{self.t_name}', '{self.x_name}'] and output ['{self.out_name}'] "
                "(re-export it with `ddpm-rt export`)"
            )
        for name in (self.x_name, self.t_name):
            if inputs[name].type != "tensor(float)":
                raise BundleError(f"graph input {name!r} is {inputs[name].type}, expected tensor(float)")

    # -- buffers ---------------------------------------------------------------------------

    def _alloc_buffers(self) -> None:
        ort = _import_ort()
        shape = (self.batch, *self.sample_shape)
        self._x = np.zeros(shape, dtype=np.float32)  # (B, ...) used when a caller's x can't be bound
        self._t = np.zeros((self.batch,), dtype=np.float32)  # (B,)
        self._out = np.zeros(shape, dtype=np.float32)  # (B, ...) the model writes here
        self._out_ov = {self.batch: ort.OrtValue.ortvalue_from_numpy(self._out)}
        self._bound: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._bind(self._x, self._t)
        self._own_bound = self.batch

    def _bind(self, x: np.ndarray, t: np.ndarray) -> None:
        """Bind x, t (zero copy: OrtValues over these very arrays) and the output slice of their batch."""
        ort = _import_ort()
        b = x.shape[0]
        if b not in self._out_ov:
            self._out_ov[b] = ort.OrtValue.ortvalue_from_numpy(self._out[:b])
        self._binding.bind_ortvalue_input(self.x_name, ort.OrtValue.ortvalue_from_numpy(x))
        self._binding.bind_ortvalue_input(self.t_name, ort.OrtValue.ortvalue_from_numpy(t))
        self._binding.bind_ortvalue_output(self.out_name, self._out_ov[b])
        self._bound = (x, t, self._out[:b])  # holding x and t keeps the identity test below sound
        self._own_bound = 0

    def _bindable(self, x: np.ndarray, t: np.ndarray) -> bool:
        return (
            x.dtype == np.float32 and t.dtype == np.float32
            and x.flags.c_contiguous and t.flags.c_contiguous and x.flags.writeable
            and t.shape == (x.shape[0],)
        )

    def _check_shape(self, x: np.ndarray, t: np.ndarray) -> None:
        b = x.shape[0] if x.ndim else 0
        if x.shape[1:] != self.sample_shape or not 1 <= b <= self.batch or t.shape != (b,):
            raise ConfigError(
                f"backend {self.name!r} was opened for x [<= {self.batch}, "
                f"{', '.join(map(str, self.sample_shape))}] and t [B]; got x {list(x.shape)}, "
                f"t {list(t.shape)}"
            )

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """out = f(x, t). The loop passes the same x and t arrays every step: bound once, then reused."""
        bound = self._bound
        if bound is None or x is not bound[0] or t is not bound[1]:
            self._check_shape(x, t)
            if self._bindable(x, t):
                self._bind(x, t)  # the caller's buffers become the graph inputs
            else:  # a foreign layout or dtype: copy into our own buffers every call
                b = x.shape[0]
                np.copyto(self._x[:b], x, casting="same_kind")
                np.copyto(self._t[:b], t, casting="same_kind")
                if self._own_bound != b:
                    self._bind(self._x[:b], self._t[:b])
                    self._own_bound = b
                self._bound = None
                self.session.run_with_iobinding(self._binding)
                return self._out[:b]
        self.session.run_with_iobinding(self._binding)
        return self._bound[2]

    def close(self) -> None:
        self._bound = None
        self._binding = None
        self.session = None


class OrtCudaBackend(OrtCpuBackend):
    """ONNX Runtime, CUDA execution provider.

    With ``BackendOptions.cuda_graph`` (shapes are static: one batch per backend) x, t and
    out live on the device, bound once, and the first run captures a CUDA graph that later
    runs replay (``enable_cuda_graph``). Each step copies x and t host→device in place
    (``OrtValue.update_inplace``) and the output device→host: the loop itself stays the
    shared host loop. Without a CUDA graph the numpy buffers are bound and ORT copies.
    """

    name = "ort-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return _provider_missing(cls.provider, GPU_HINT)

    @classmethod
    def cuda_options(cls, options: BackendOptions) -> dict[str, Any]:
        device_id = int(options.extra.get("device_id", 0))
        return {"device_id": device_id, "enable_cuda_graph": "1" if options.cuda_graph else "0",
                "cudnn_conv_algo_search": "EXHAUSTIVE"}

    @classmethod
    def providers(cls, onnx_path: Path, batch: int, sample_shape: tuple[int, ...],
                  options: BackendOptions, cache: Path) -> list[Any]:
        return [(cls.provider, cls.cuda_options(options)), "CPUExecutionProvider"]

    @classmethod
    def open(cls, source: ModelSource, batch: int, options: BackendOptions) -> OrtCudaBackend:
        be = super().open(source, batch, options)
        assert isinstance(be, OrtCudaBackend)
        be.device_id = int(options.extra.get("device_id", 0))
        be.cuda_graph = bool(options.cuda_graph)
        be.info["cuda_graph"] = be.cuda_graph
        if be.cuda_graph:
            be._alloc_device_buffers()
        return be

    def _alloc_device_buffers(self) -> None:
        ort = _import_ort()
        shape = (self.batch, *self.sample_shape)
        new = ort.OrtValue.ortvalue_from_shape_and_type
        self._x_dev = new(shape, np.float32, "cuda", self.device_id)
        self._t_dev = new((self.batch,), np.float32, "cuda", self.device_id)
        self._out_dev = new(shape, np.float32, "cuda", self.device_id)
        self._binding.bind_ortvalue_input(self.x_name, self._x_dev)
        self._binding.bind_ortvalue_input(self.t_name, self._t_dev)
        self._binding.bind_ortvalue_output(self.out_name, self._out_dev)
        self.session.run_with_iobinding(self._binding)  # first run captures the CUDA graph

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        if not getattr(self, "cuda_graph", False):
            return super().__call__(x, t)
        if x.shape != (self.batch, *self.sample_shape) or t.shape != (self.batch,):
            raise ConfigError(
                f"backend {self.name!r} with a CUDA graph runs exactly batch {self.batch}; "
                f"got x {list(x.shape)} (open it for that batch, or pass cuda_graph=False)"
            )
        self._x_dev.update_inplace(np.ascontiguousarray(x, dtype=np.float32))
        self._t_dev.update_inplace(np.ascontiguousarray(t, dtype=np.float32))
        self.session.run_with_iobinding(self._binding)  # replays the captured graph
        np.copyto(self._out, self._out_dev.numpy())
        return self._out

    def close(self) -> None:
        self._x_dev = self._t_dev = self._out_dev = None
        super().close()


class OrtTensorRTBackend(OrtCudaBackend):
    """ONNX Runtime, TensorRT execution provider (CUDA EP as fallback for unsupported nodes).

    Engines are cached by the EP (``trt_engine_cache_enable``) in a directory keyed like
    the ORT graph cache (ONNX hash, ORT version, precision, batch profile); the graph
    cache itself is off, since ORT cannot save graphs holding compiled TensorRT nodes.
    """

    name = "ort-trt"
    device = "cuda"
    provider = "TensorrtExecutionProvider"

    @classmethod
    def check_precision(cls, precision: str) -> None:
        if precision not in ("fp32", "fp16"):
            raise ConfigError(f"backend {cls.name!r} runs fp32 or fp16, got --precision {precision}")

    @classmethod
    def cache_graph(cls) -> bool:
        return False

    @classmethod
    def providers(cls, onnx_path: Path, batch: int, sample_shape: tuple[int, ...],
                  options: BackendOptions, cache: Path) -> list[Any]:
        from ddpm_rt.runtime import ort_cache

        x_name, t_name, _ = _contract_names()
        dims = "x".join(str(d) for d in sample_shape)
        profile = {  # one optimisation profile: batch 1..B, tuned for B
            "trt_profile_min_shapes": f"{x_name}:1x{dims},{t_name}:1",
            "trt_profile_opt_shapes": f"{x_name}:{batch}x{dims},{t_name}:{batch}",
            "trt_profile_max_shapes": f"{x_name}:{batch}x{dims},{t_name}:{batch}",
        }
        entry = ort_cache.cache_entry(onnx_path, cls.provider,
                                      {"precision": options.precision, **profile},
                                      options.cache_dir)
        engines = entry.directory / f"trt-{entry.key}"
        engines.mkdir(parents=True, exist_ok=True)
        trt = {
            "device_id": int(options.extra.get("device_id", 0)),
            "trt_fp16_enable": options.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engines),
            "trt_cuda_graph_enable": bool(options.cuda_graph),
            **profile,
        }
        cuda = {**cls.cuda_options(options), "enable_cuda_graph": "0"}
        return [(cls.provider, trt), ("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
