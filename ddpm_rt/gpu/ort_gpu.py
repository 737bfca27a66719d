"""ONNX Runtime on the GPU: the CUDA and TensorRT execution providers (extra `[ort-gpu]`).

Written against onnxruntime-gpu's Python API; not run in this project's CI (no GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ddpm_rt.bundle.contract import CONTRACT
from ddpm_rt.bundle.load import Bundle
from ddpm_rt.errors import ConfigError
from ddpm_rt.runtime.backend import BackendOptions
from ddpm_rt.runtime.ort_backend import OrtCpuBackend, _import_ort, _provider_missing

GPU_HINT = "install onnxruntime-gpu: pip install 'ddpm-rt[ort-gpu]'"


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
    def open(cls, bundle: Bundle, batch: int, options: BackendOptions) -> OrtCudaBackend:
        be = super().open(bundle, batch, options)
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

        x_name, t_name = CONTRACT.x_name, CONTRACT.t_name
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
