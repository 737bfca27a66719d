"""ONNX Runtime on the GPU: the CUDA and TensorRT execution providers (extra `[ort-gpu]`), device-resident.

Both run in `DeviceLoop`, the same loop as the torch-cuda and trt backends: x, t, the model
output, the history ring, the noise and the coefficient tables are torch tensors on the
device, allocated once per (plan, batch). ONNX Runtime reads and writes those tensors in
place through IO binding on their device pointers (``IOBinding.bind_input/bind_output`` with
``data_ptr()``), bound once per buffer set; it runs on the loop's own CUDA stream
(``user_compute_stream``) with the per-run host synchronisation off
(``disable_synchronize_execution_providers``), so a step is a kernel launch on one stream:
no host↔device copy, no allocation. The whole loop is not captured in a CUDA graph here
(ONNX Runtime allocates from its own arena inside a run), so `cuda_graph` is ignored.

The same code runs on the CPU (device "cpu": CPU tensors, the CPU execution provider), which
is how it is tested in this project's CI. Written against onnxruntime-gpu's Python API; no
GPU has run it here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ddpm_rt.bundle.contract import CONTRACT
from ddpm_rt.bundle.load import Bundle
from ddpm_rt.errors import BackendUnavailable, BundleError, ConfigError, first_line
from ddpm_rt.gpu.device_backend import DeviceLoopBackend
from ddpm_rt.runtime.backend import BackendOptions
from ddpm_rt.runtime.ort_backend import _import_ort, _provider_missing, check_session_io

if TYPE_CHECKING:
    import torch

GPU_HINT = "install onnxruntime-gpu: pip install 'ddpm-rt[ort-gpu]'"


class OrtDeviceBackend(DeviceLoopBackend):
    """An ONNX Runtime session whose inputs and outputs are the DeviceLoop's own device tensors."""

    provider: ClassVar[str] = "CPUExecutionProvider"
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, bundle: Bundle, batch: int, options: BackendOptions, device: str = "cuda") -> None:
        from ddpm_rt.gpu.device_loop import DeviceLoop

        ort = _import_ort()
        self.batch = batch
        self.loop = DeviceLoop(self._denoise, device, cuda_graph=False)
        stream = self.loop.stream
        self._dev_type = "cuda" if stream is not None else "cpu"
        self._dev_id = int(options.extra.get("device_id", 0)) if stream is not None else 0
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            so.intra_op_num_threads = options.threads
        providers = self.providers(bundle, batch, options, None if stream is None else stream.cuda_stream)
        with self.session_lock(bundle, batch, options):  # the EP may write its own cache while it opens
            try:
                self.session = ort.InferenceSession(str(bundle.onnx_path), so, providers=providers)
            except Exception as e:  # noqa: BLE001 - ORT raises its own untyped errors
                if not self.discard_own_cache(bundle, batch, options):
                    raise BundleError(f"onnxruntime cannot load {bundle.onnx_path}: {first_line(e)}") from None
                try:  # a killed writer may have left a damaged engine: rebuilt once from scratch
                    self.session = ort.InferenceSession(str(bundle.onnx_path), so, providers=providers)
                except Exception as e2:  # noqa: BLE001
                    raise BundleError(f"onnxruntime cannot load {bundle.onnx_path}: {first_line(e2)}") from None
        self.contract = CONTRACT.for_spec(bundle.spec)
        check_session_io(self.session, bundle.spec.sample_shape, batch, str(bundle.onnx_path), self.contract)
        self._binding = self.session.io_binding()
        self._run_options = ort.RunOptions()
        if stream is not None:  # ordering comes from the shared stream, not from a host sync per run
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self._bound: tuple[int, int, int, tuple[int, ...]] | None = None
        self.info = {"providers": self.session.get_providers(), "device": device, "onnx": str(bundle.onnx_path),
                     "onnxruntime": ort.__version__, "device_resident": True}

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from ddpm_rt.gpu.availability import cuda_missing_reason

        return _provider_missing(cls.provider, GPU_HINT) or cuda_missing_reason()

    @classmethod
    def provider_options(cls, bundle: Bundle, batch: int, options: BackendOptions) -> dict[str, Any]:
        return {}

    @classmethod
    def session_lock(cls, bundle: Bundle, batch: int, options: BackendOptions) -> contextlib.AbstractContextManager:
        """Held while the session opens: a provider that writes its own cache holds a file lock."""
        return contextlib.nullcontext()

    @classmethod
    def discard_own_cache(cls, bundle: Bundle, batch: int, options: BackendOptions) -> bool:
        """Remove a cache the provider wrote itself (True if there was one to remove)."""
        return False

    @classmethod
    def providers(cls, bundle: Bundle, batch: int, options: BackendOptions, stream: int | None) -> list[Any]:
        if stream is None:  # the CPU path (tests): same binding logic, CPU execution provider
            return ["CPUExecutionProvider"]
        shared = {"device_id": int(options.extra.get("device_id", 0)), "has_user_compute_stream": "1",
                  "user_compute_stream": str(stream)}
        cuda = {**shared, "cudnn_conv_algo_search": "EXHAUSTIVE"}
        if cls.provider == "CUDAExecutionProvider":
            return [(cls.provider, cuda), "CPUExecutionProvider"]
        return [(cls.provider, {**shared, **cls.provider_options(bundle, batch, options)}),
                ("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    @classmethod
    def open(cls, bundle: Bundle, batch: int, options: BackendOptions) -> OrtDeviceBackend:
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend {cls.name!r} is unavailable: {reason}")
        if options.precision not in cls.precisions:
            raise ConfigError(f"backend {cls.name!r} runs {' or '.join(cls.precisions)}, "
                              f"got --precision {options.precision}")
        return cls(bundle, batch, options, device=f"cuda:{int(options.extra.get('device_id', 0))}")

    # -- the denoiser slot of the device loop ---------------------------------------------------

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor, *cond: torch.Tensor) -> None:
        key = (x.data_ptr(), t.data_ptr(), out.data_ptr(), tuple(x.shape), *(c.data_ptr() for c in cond))
        if key != self._bound:  # the loop's buffers are static: this binds once per (plan, batch)
            b = self._binding
            dtypes = (np.float32, np.float32, *(c.np_dtype for c in self.contract.conditioning))
            for name, tensor, dtype in zip(self.contract.input_names, (x, t, *cond), dtypes, strict=True):
                b.bind_input(name, self._dev_type, self._dev_id, dtype, list(tensor.shape), tensor.data_ptr())
            b.bind_output(CONTRACT.out_name, self._dev_type, self._dev_id, np.float32, list(out.shape),
                          out.data_ptr())
            self._bound = key
        try:
            self.session.run_with_iobinding(self._binding, self._run_options)
        except Exception as e:  # noqa: BLE001 - ORT's untyped runtime errors, as one line
            raise BundleError(f"onnxruntime failed running the denoiser: {first_line(e)}") from None

    def __call__(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        import torch

        stream = self.loop.stream  # the host call (parity checks) runs on the session's stream too
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            return super().__call__(x, t, *cond)

    def close(self) -> None:
        super().close()
        self._binding = None
        self.session = None


class OrtCudaBackend(OrtDeviceBackend):
    """ONNX Runtime, CUDA execution provider, every buffer on the device."""

    name = "ort-cuda"
    device = "cuda"
    provider = "CUDAExecutionProvider"


class OrtTensorRTBackend(OrtDeviceBackend):
    """ONNX Runtime, TensorRT execution provider (CUDA EP for unsupported nodes), every buffer on the device.

    Engines are cached by the EP (``trt_engine_cache_enable``) in a directory keyed like the
    ORT graph cache (ONNX hash, ORT version, precision, batch profile).
    """

    name = "ort-trt"
    device = "cuda"
    provider = "TensorrtExecutionProvider"
    precisions = ("fp32", "fp16")

    @staticmethod
    def _profile(bundle: Bundle, batch: int) -> dict[str, str]:
        x_name, t_name = CONTRACT.x_name, CONTRACT.t_name
        dims = "x".join(str(d) for d in bundle.spec.sample_shape)
        return {  # one optimisation profile: batch 1..B, tuned for B
            "trt_profile_min_shapes": f"{x_name}:1x{dims},{t_name}:1",
            "trt_profile_opt_shapes": f"{x_name}:{batch}x{dims},{t_name}:{batch}",
            "trt_profile_max_shapes": f"{x_name}:{batch}x{dims},{t_name}:{batch}",
        }

    @classmethod
    def _engine_dir(cls, bundle: Bundle, batch: int, options: BackendOptions) -> Path:
        from ddpm_rt.runtime import ort_cache

        entry = ort_cache.cache_entry(bundle.onnx_path, cls.provider,
                                      {"precision": options.precision, **cls._profile(bundle, batch)}, options.cache_dir)
        return Path(entry.directory) / f"trt-{entry.key}"

    @classmethod
    def session_lock(cls, bundle: Bundle, batch: int, options: BackendOptions) -> contextlib.AbstractContextManager:
        """The EP writes its engine and timing cache itself (not atomically) while the session opens:
        one process at a time per engine directory, the others wait and then load what it wrote."""
        from ddpm_rt.fsutil import file_lock

        return file_lock(cls._engine_dir(bundle, batch, options).with_suffix(".lock"), what="building this TensorRT engine")

    @classmethod
    def discard_own_cache(cls, bundle: Bundle, batch: int, options: BackendOptions) -> bool:
        import shutil

        engines = cls._engine_dir(bundle, batch, options)
        if not engines.is_dir() or not any(engines.iterdir()):
            return False
        shutil.rmtree(engines, ignore_errors=True)
        return True

    @classmethod
    def provider_options(cls, bundle: Bundle, batch: int, options: BackendOptions) -> dict[str, Any]:
        profile = cls._profile(bundle, batch)
        engines = cls._engine_dir(bundle, batch, options)
        engines.mkdir(parents=True, exist_ok=True)
        return {
            "trt_fp16_enable": options.precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engines),
            **profile,
        }
