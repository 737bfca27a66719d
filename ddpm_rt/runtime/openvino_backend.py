"""OpenVINO backend (CPU): the bundle's ``denoiser.onnx`` compiled once, run on shared numpy buffers.

Why `openvino` and not ONNX Runtime's OpenVINO plugin EP: the plugin does not see in-place
updates of IO-bound inputs, which the host loop relies on (benchmarks/results/openvino_probe.md).

* Compiled for a static batch (``model.reshape``) with explicit ``INFERENCE_NUM_THREADS``,
  ``INFERENCE_PRECISION_HINT`` (f32 | bf16 | f16), the latency hint and one stream.
* OpenVINO's own model cache (``CACHE_DIR``) lives in ``openvino_cache/<key>`` beside the bundle
  (else the user cache, as the ORT graph cache does); the key covers the bundle's sha256, the
  batch, precision, device and OpenVINO version, so any change compiles afresh into a new slot.
* ``x``, ``t`` and ``out`` are ``ov.Tensor`` views of numpy arrays (``shared_memory=True``), set
  on the infer request once: the loop's own x and t *are* the inputs and the model writes straight
  into a preallocated output, so a step is one ``start_async``/``wait`` and allocates nothing
  (tests/cpu/test_openvino_backend.py).
* ``int8`` runs a quantized bundle (``ddpm_rt.exporter.int8``): OpenVINO executes its QDQ nodes in
  int8 and the rest at f32.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddpm_rt.bundle.contract import CONTRACT, GraphContract
from ddpm_rt.errors import BackendUnavailable, BundleError, ConfigError, first_line
from ddpm_rt.fsutil import (
    atomic_write_bytes,
    atomic_write_text,
    clean_stale_temps,
    file_lock,
    file_sha256,
    json_key,
    writable_dir,
)
from ddpm_rt.precision import Precision, check_supported, cpu_capabilities
from ddpm_rt.runtime import ort_cache
from ddpm_rt.runtime.backend import Backend, BackendOptions

if TYPE_CHECKING:
    from ddpm_rt.bundle.load import Bundle

INSTALL_HINT = "pip install 'ddpm-rt[openvino]'"
CACHE_SUBDIR = "openvino_cache"
CACHE_FORMAT = 1
DEVICE = "CPU"
SUPPORTED = (Precision.FP32, Precision.BF16, Precision.FP16, Precision.INT8)
# precision -> (INFERENCE_PRECISION_HINT, the OPTIMIZATION_CAPABILITIES entry it needs)
_HINTS: dict[Precision, tuple[str, str | None]] = {
    Precision.FP32: ("f32", None),
    Precision.BF16: ("bf16", "BF16"),
    Precision.FP16: ("f16", "FP16"),
    Precision.INT8: ("f32", "INT8"),  # QDQ nodes run in int8, everything else in f32
}


def _import_ov() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(f"openvino is not installed: {INSTALL_HINT}") from None
    return openvino


def cache_dir_for(onnx_path: Path, override: str | Path | None = None) -> Path:
    """`override`/openvino_cache, else beside the bundle, else the user cache (as for ORT's cache)."""
    return ort_cache.cache_dir_for(onnx_path, override, subdir=CACHE_SUBDIR)


def cache_fields(bundle_sha256: str, batch: int, precision: Precision, ov_version: str,
                 threads: int = 0) -> dict[str, Any]:
    """What a compiled model depends on: graph, batch, precision, threads, OpenVINO, this CPU."""
    return {"format": CACHE_FORMAT, "bundle_sha256": bundle_sha256, "batch": batch,
            "precision": precision.value, "threads": threads, "device": DEVICE, "openvino": ov_version,
            "cpu": cpu_capabilities().key()}


def cache_key(fields: dict[str, Any]) -> str:
    return json_key(fields)


def cached_compile(core: Any, cache: Path, fields: dict[str, Any], config: dict[str, Any],
                   compile_model: Callable[[], Any]) -> tuple[Any, str]:
    """(compiled model, "hit" | "built" | "uncached"), with OpenVINO's compiled blob cached by us.

    OpenVINO's own CACHE_DIR writes its blob in place, unlocked, while another process may map
    the same file: concurrent first runs died with SIGBUS, and a kill mid-write leaves a blob
    that breaks the next run. Instead the blob is `CompiledModel.export_model()` bytes, written
    atomically (temp file + rename) under a file lock (one compiler per entry; the others wait and
    import it), and read into memory (`Core.import_model`), never mapped. A blob that does not
    import is rebuilt.
    """
    if not writable_dir(cache):
        return compile_model(), "uncached"
    blob = cache / "model.blob"

    def load() -> Any:
        if not blob.is_file():
            return None
        try:
            return core.import_model(blob.read_bytes(), DEVICE, config)
        except Exception:  # noqa: BLE001 - a damaged or foreign blob: rebuild it
            return None

    compiled = load()  # the common case: built before, no lock needed (the file is complete)
    if compiled is not None:
        return compiled, "hit"
    with file_lock(cache / ".lock"):
        clean_stale_temps(cache)
        compiled = load()  # another process may have built it while we waited
        if compiled is not None:
            return compiled, "hit"
        compiled = compile_model()
        exported = compiled.export_model()  # bytes, or a BytesIO in some OpenVINO releases
        atomic_write_bytes(blob, exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported))
        atomic_write_text(cache / "fields.json", json.dumps(fields, indent=2, sort_keys=True, default=str) + "\n")
        return compiled, "built"


def _bundle_sha256(bundle: Bundle) -> str:
    return bundle.onnx_sha256


def check_precision(precision: str | Precision, bundle_precision: str, capabilities: list[str]) -> Precision:
    """The precision to compile at, checked against this CPU, OpenVINO's device and the bundle."""
    wanted = check_supported(precision, OpenVinoBackend.name, SUPPORTED)
    is_int8 = bundle_precision == Precision.INT8.value
    if (wanted is Precision.INT8) != is_int8:
        raise ConfigError(
            f"--precision {wanted} needs {'an int8' if wanted is Precision.INT8 else 'a float'} bundle, "
            f"this bundle is {bundle_precision}; "
            + ("make one with ddpm_rt.exporter.int8.quantize_bundle" if not is_int8
               else "open it with --precision int8")
        )
    need = _HINTS[wanted][1]
    if need is not None and need not in capabilities:
        have = [p.value for p, (_, cap) in _HINTS.items() if cap is None or cap in capabilities]
        raise ConfigError(
            f"OpenVINO's CPU plugin cannot run --precision {wanted} on this CPU "
            f"(it reports {', '.join(capabilities)}); available: {', '.join(have)}"
        )
    return wanted


class OpenVinoBackend(Backend):
    """OpenVINO on CPU, static batch, inputs and output shared with numpy arrays."""

    name = "openvino"
    device = "cpu"

    def __init__(self, request: Any, contract: GraphContract, batch: int,
                 sample_shape: tuple[int, ...], info: dict[str, Any], shallow: Any = None,
                 feature: tuple[str, tuple[int, ...]] | None = None) -> None:
        self._request = request
        # feature caching: `request` runs the full graph that also writes the deep feature into
        # `_feat`, `shallow` the graph that reads it (both share x, t, out and the one feature buffer)
        self._shallow = shallow
        self.feature_name, self.feature_shape = feature if feature is not None else ("", ())
        self.contract = contract
        self.x_name, self.t_name, self.out_name = contract.x_name, contract.t_name, contract.out_name
        self.batch = batch
        self.sample_shape = tuple(sample_shape)
        self.info = info
        from openvino._pyopenvino import InferRequest

        # the C++ start_async with one empty input dict made once: the Python wrapper builds a new
        # dict per call, which OpenVINO keeps alive for a while (tens of them, then released)
        self._start_async = InferRequest.start_async
        self._no_inputs: dict[str, Any] = {}
        shape = (batch, *self.sample_shape)
        # used when a caller's arrays cannot be shared: x (B, ...), t (B,), each conditioning input
        self._own = (np.zeros(shape, np.float32), np.zeros((batch,), np.float32),
                     *(np.zeros((batch, *c.shape), c.np_dtype) for c in contract.conditioning))
        self._out = np.zeros(shape, np.float32)  # (B, ...) the model writes here
        self._set(self.out_name, self._out)
        if shallow is not None:
            self._feat = np.zeros((batch, *self.feature_shape), np.float32)  # (B, C_f, H_f, W_f)
            self._set(self.feature_name, self._feat)
            self._set(self.feature_name, self._feat, shallow)
            self._set(self.out_name, self._out, shallow)
        self._bound: tuple[np.ndarray, ...] | None = None
        self._share(self._own)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def unavailable_reason(cls) -> str | None:
        # found, not imported: `import openvino` costs ~0.2 s, paid only when it is opened
        if importlib.util.find_spec("openvino") is None:
            return f"openvino is not installed: {INSTALL_HINT}"
        return None

    @classmethod
    def open(cls, bundle: Bundle, batch: int, options: BackendOptions) -> OpenVinoBackend:
        ov = _import_ov()
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        core = ov.Core()
        capabilities = list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
        precision = check_precision(options.precision, bundle.manifest.get("precision", "fp32"), capabilities)
        threads = int(options.threads or 0)  # 0 = OpenVINO's default (all usable cores)
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": _HINTS[precision][0],
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        fields = cache_fields(_bundle_sha256(bundle), batch, precision, ov.__version__, threads)
        contract = CONTRACT.for_spec(bundle.spec)
        sample_shape = tuple(bundle.spec.sample_shape)
        onnx_path, shallow_path, feature = bundle.graphs_to_open(bool(options.feature_cache))

        def compile_at(path: Path, role: str) -> tuple[Any, str, Path]:
            slot = fields if role == "denoiser" else {**fields, "graph": role, "graph_sha256": file_sha256(path)}
            cache = cache_dir_for(bundle.onnx_path, options.cache_dir) / cache_key(slot)

            def compile_model() -> Any:
                try:
                    model = core.read_model(str(path))
                    shapes = {name: list(shape) for name, shape in contract.shapes(sample_shape, batch).items()
                              if name in contract.input_names}
                    if role == "cache_shallow":
                        assert feature is not None
                        shapes[feature[0]] = [batch, *feature[1]]
                    model.reshape(shapes)
                except Exception as e:  # noqa: BLE001 - OpenVINO raises untyped RuntimeErrors
                    raise BundleError(f"OpenVINO cannot read {path}: {first_line(e)}") from None
                return core.compile_model(model, DEVICE, config)

            return (*cached_compile(core, cache, slot, config, compile_model), cache)

        t0 = time.perf_counter()
        compiled, status, cache = compile_at(onnx_path, "cache_full" if shallow_path is not None else "denoiser")
        shallow = compile_at(shallow_path, "cache_shallow")[0] if shallow_path is not None else None
        info = {
            "onnx": str(onnx_path), "cache_dir": str(cache), "model_cache": status,
            "compile_s": round(time.perf_counter() - t0, 3), "precision": precision.value,
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "device": DEVICE, "openvino": ov.__version__, "capabilities": capabilities,
        }
        be = cls(compiled.create_infer_request(), contract, batch, sample_shape, info,
                 shallow=shallow.create_infer_request() if shallow is not None else None, feature=feature)
        be._check_io(compiled)
        if shallow is not None:
            be._check_io(shallow)
        return be

    def _check_io(self, compiled: Any) -> None:
        inputs = {n for port in compiled.inputs for n in port.get_names()}
        outputs = {n for port in compiled.outputs for n in port.get_names()}
        if not set(self.contract.input_names) <= inputs or self.out_name not in outputs:
            raise BundleError(
                f"the denoiser graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}; expected "
                f"{', '.join(self.contract.input_names)} -> {self.out_name} (re-export it with `ddpm-rt export`)"
            )

    # -- buffers ---------------------------------------------------------------------------

    def _set(self, name: str, array: np.ndarray, request: Any = None) -> None:
        ov = _import_ov()
        (request or self._request).set_tensor(name, ov.Tensor(array, shared_memory=True))

    def _share(self, inputs: tuple[np.ndarray, ...]) -> None:
        """Make the inputs (full batch, C-contiguous) the request's inputs, zero copy."""
        for name, array in zip(self.contract.input_names, inputs, strict=True):
            self._set(name, array)
            if self._shallow is not None:
                self._set(name, array, self._shallow)
        self._bound = inputs  # holding them keeps the identity test in __call__ sound

    def _shareable(self, inputs: tuple[np.ndarray, ...]) -> bool:
        dtypes = (np.float32, np.float32, *(c.np_dtype for c in self.contract.conditioning))
        return all(a.shape[:1] == (self.batch,) and a.dtype == d and a.flags.c_contiguous and a.flags.writeable
                   for a, d in zip(inputs, dtypes, strict=True))

    def _check_shape(self, inputs: tuple[np.ndarray, ...]) -> None:
        x, t, *cond = inputs
        b = x.shape[0] if x.ndim else 0
        conditioning = self.contract.conditioning
        if (x.shape[1:] != self.sample_shape or not 1 <= b <= self.batch or t.shape != (b,)
                or len(cond) != len(conditioning)
                or any(a.shape != (b, *c.shape) for a, c in zip(cond, conditioning, strict=False))):
            raise ConfigError(
                f"backend {self.name!r} was opened for {', '.join(self.contract.input_names)} with x [<= "
                f"{self.batch}, {', '.join(map(str, self.sample_shape))}]; got "
                + ", ".join(str(list(np.shape(a))) for a in inputs)
            )

    def _infer(self, request: Any = None) -> None:
        request = request or self._request
        self._start_async(request, self._no_inputs, None)  # infer() would build a result dict
        request.wait()

    def cached(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        """out = shallow(x, t, *cond, feature of the last full call): a feature-cache row."""
        if self._shallow is None:
            raise ConfigError(f"backend {self.name!r} was opened without the feature-cache graphs; "
                              "open it with BackendOptions(feature_cache=True)")
        return self._run_on(self._shallow, (x, t, *cond))

    def __call__(self, x: np.ndarray, t: np.ndarray, *cond: np.ndarray) -> np.ndarray:
        """out = f(x, t, *cond). The loop passes the same arrays every step: shared once, then reused."""
        return self._run_on(self._request, (x, t, *cond))

    def _run_on(self, request: Any, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        """Run `request` (the denoiser, or the feature cache's shallow graph) on `inputs`."""
        bound = self._bound
        if bound is not None and len(bound) == len(inputs) and all(a is b for a, b in zip(inputs, bound, strict=True)):
            self._infer(request)
            return self._out
        self._check_shape(inputs)
        if self._shareable(inputs):
            self._share(inputs)
            self._infer(request)
            return self._out
        b = inputs[0].shape[0]  # a smaller batch or a foreign layout: copy into our own buffers
        if self._bound is not self._own:
            self._share(self._own)
        for own, given in zip(self._own, inputs, strict=True):
            np.copyto(own[:b], given, casting="same_kind")
        self._infer(request)
        return self._out[:b]

    def close(self) -> None:
        self._bound = None
        self._request = None
        self._shallow = None
