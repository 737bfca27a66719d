"""TensorRT: the engine call in the DeviceLoop's denoiser slot, the whole loop in one CUDA graph.

Lifecycle (as TensorRT's demo/Diffusion engine.py: build -> load -> bind -> infer):
the engine comes from the bundle's engine cache (built on demand, with a message),
is deserialized once, gets one execution context, and is bound to the DeviceLoop's
static x / t / out buffers with ``set_input_shape`` + ``set_tensor_address``; every
step is one ``execute_async_v3`` on the current stream (the capture stream while the
loop's CUDA graph is recorded). Engine IO is float32 whatever the compute precision.

Written against the TensorRT 10 Python API; not run in this project's CI (no GPU).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm_rt.bundle.contract import CONTRACT, GraphContract
from ddpm_rt.errors import BackendUnavailable, BundleError, ConfigError
from ddpm_rt.gpu.device_backend import DeviceLoopBackend
from ddpm_rt.runtime.backend import BackendOptions

if TYPE_CHECKING:
    import torch

    from ddpm_rt.bundle.load import Bundle



class TrtEngine:
    """One deserialized engine + execution context, callable as ``engine(x, t, out)`` on CUDA tensors."""

    def __init__(self, plan_path: Path, contract: GraphContract = CONTRACT) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self.contract = contract
        self.plan_path = Path(plan_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise BundleError(
                f"TensorRT cannot load engine {self.plan_path}; rebuild it with `ddpm-rt build --force`"
            )
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        wanted = {*contract.input_names, contract.out_name}
        if names != wanted:
            raise BundleError(f"engine {self.plan_path} has IO {sorted(names)}, expected {sorted(wanted)}")
        for name in wanted:
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise BundleError(f"engine tensor {name!r} is {self.engine.get_tensor_dtype(name)}, expected float32")
        lo, _, hi = self.engine.get_tensor_profile_shape(contract.x_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.context = self.engine.create_execution_context()
        self._bound: tuple[Any, ...] | None = None

    def covers(self, batch: int) -> bool:
        return self.min_batch <= batch <= self.max_batch

    def _bind(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
        c, ctx = self.contract, self.context
        batch = int(x.shape[0])
        if not self.covers(batch):
            raise ConfigError(
                f"batch {batch} is outside the engine's range {self.min_batch}..{self.max_batch}; "
                f"rebuild with `ddpm-rt build --max-batch {batch}`"
            )
        for tensor in (x, t, out):
            assert tensor.is_cuda and tensor.is_contiguous() and tensor.dtype == self._torch.float32
        for name, shape in ((c.x_name, tuple(x.shape)), (c.t_name, tuple(t.shape))):
            if not ctx.set_input_shape(name, shape):
                raise ConfigError(f"engine {self.plan_path} rejects input {name!r} of shape {shape}")
        ctx.set_tensor_address(c.x_name, x.data_ptr())
        ctx.set_tensor_address(c.t_name, t.data_ptr())
        ctx.set_tensor_address(c.out_name, out.data_ptr())

    def __call__(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> None:
        key = (x.data_ptr(), t.data_ptr(), out.data_ptr(), tuple(x.shape))
        if key != self._bound:  # the DeviceLoop's buffers are static: binds once per state
            self._bind(x, t, out)
            self._bound = key
        stream = self._torch.cuda.current_stream().cuda_stream
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.plan_path}")

    def close(self) -> None:
        self.context = None
        self.engine = None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class TrtBackend(DeviceLoopBackend):
    """A TensorRT engine driven by `DeviceLoop`."""

    name = "trt"
    device = "cuda"

    def __init__(self, engine: TrtEngine, *, cuda_graph: bool = True) -> None:
        from ddpm_rt.gpu.device_loop import DeviceLoop

        self.engine = engine
        self.loop = DeviceLoop(engine, "cuda", cuda_graph=cuda_graph)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from ddpm_rt.gpu.availability import tensorrt_missing_reason

        return tensorrt_missing_reason()

    @classmethod
    def open(cls, bundle: Bundle, batch: int, options: BackendOptions) -> TrtBackend:
        reason = cls.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)
        if bundle.spec.conditioning:  # the engine builder's profiles cover x and t only
            raise BackendUnavailable("the trt backend builds engines for unconditional bundles only; sample "
                                     "this conditional bundle with --backend ort-trt, ort-cuda or torch-cuda")
        from ddpm_rt.gpu.trt_build import DEFAULT_OPT_LEVEL, BuildConfig, ensure_engine

        cache_dir = Path(options.cache_dir) if options.cache_dir else None
        bundle_dir = bundle.directory if bundle.hash_checked else bundle.onnx_path
        cfg = BuildConfig(
            precision=options.precision,
            min_batch=1,
            opt_batch=batch,
            max_batch=batch,
            opt_level=int(options.extra.get("opt_level", DEFAULT_OPT_LEVEL)),
        )
        record = ensure_engine(bundle_dir, cfg, cache_dir=cache_dir, reuse_covering=batch, log=_log)
        if record.built:
            _log(f"built TensorRT engine {record.key} (cached at {record.plan_path})")
        return cls(TrtEngine(record.plan_path), cuda_graph=options.cuda_graph)

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor, *cond: torch.Tensor) -> None:
        assert not cond, "trt engines are unconditional (refused at open)"
        self.engine(x, t, out)

    def close(self) -> None:
        super().close()
        self.engine.close()
