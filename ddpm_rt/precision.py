"""Numeric precision as one concept across backends, and what this CPU can run natively.

`Precision` is the one enum every backend and the CLI take (``--precision fp32|fp16|bf16|int8``).
`cpu_capabilities()` reads the instruction-set flags of ``/proc/cpuinfo`` once per process;
`check_supported` validates a requested precision against what a backend implements and,
for CPU backends, what this CPU has, with a one-line error naming what *is* available.

Reduced precisions need hardware support to be worth running on a CPU:

* ``bf16``: AVX512_BF16 or AMX-BF16 (OpenVINO emulates nothing slower; ORT has no bf16 CPU kernels);
* ``fp16``: AVX512_FP16 or AMX-FP16 (Sapphire Rapids and later);
* ``int8``: AVX2 at least (VNNI / AMX-INT8 make it fast), or Arm NEON.
"""

from __future__ import annotations

import enum
import functools
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ddpm_rt.errors import ConfigError

CPUINFO = Path("/proc/cpuinfo")

# The flags we report (and key caches on); a subset of what /proc/cpuinfo lists.
TRACKED_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "bf16", "i8mm",
)


class Precision(str, enum.Enum):
    """Arithmetic precision of the denoiser. The values are the CLI / manifest strings."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    @property
    def reduced(self) -> bool:
        """True for every precision that needs the quality guard before `auto` may use it."""
        return self is not Precision.FP32

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        """The enum member for `value` (case-insensitive); a one-line ConfigError otherwise."""
        if isinstance(value, Precision):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            allowed = "|".join(p.value for p in cls)
            raise ConfigError(f"unknown precision {value!r}; choose one of {allowed}") from None


# precision -> any one of these flags makes it native on this CPU
_NEEDS: dict[Precision, tuple[str, ...]] = {
    Precision.FP32: (),
    Precision.BF16: ("avx512_bf16", "amx_bf16", "bf16"),
    Precision.FP16: ("avx512_fp16", "amx_fp16"),
    Precision.INT8: ("avx2", "asimd"),
}


@dataclass(frozen=True)
class CpuCapabilities:
    """The CPU model name and the tracked instruction-set flags it reports."""

    model: str
    flags: frozenset[str]

    def supports(self, precision: Precision) -> bool:
        needs = _NEEDS[precision]
        return not needs or any(f in self.flags for f in needs)

    def available(self) -> list[Precision]:
        return [p for p in Precision if self.supports(p)]

    @property
    def isa_class(self) -> str:
        """A coarse machine class for caches and result files: amx | avx512_bf16 | avx512 | avx2 | other."""
        for cls, flag in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"),
                          ("avx2", "avx2")):
            if flag in self.flags:
                return cls
        return "other"

    def key(self) -> dict[str, object]:
        """What a cached verdict or timing depends on about this CPU."""
        return {"cpu": self.model, "flags": sorted(self.flags), "machine": platform.machine()}


def parse_cpuinfo(text: str) -> CpuCapabilities:
    """Model name and tracked flags from the text of /proc/cpuinfo (x86 ``flags`` or Arm ``Features``)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return CpuCapabilities(model or platform.processor() or platform.machine(),
                           frozenset(f for f in flags if f in TRACKED_FLAGS))


@functools.cache
def cpu_capabilities(path: Path = CPUINFO) -> CpuCapabilities:
    """This machine's CPU (read once per process); no flags at all where /proc/cpuinfo is absent."""
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def _names(precisions: Iterable[Precision]) -> str:
    return ", ".join(p.value for p in Precision if p in set(precisions)) or "none"


def check_supported(
    precision: str | Precision,
    backend_name: str,
    supported: Iterable[str | Precision],
    *,
    device: str = "cpu",
    cpu: CpuCapabilities | None = None,
) -> Precision:
    """`precision` parsed and checked against the backend's `supported` set and, on CPU, this CPU.

    Raises a one-line ConfigError naming what is available on this backend (and CPU).
    """
    wanted = Precision.parse(precision)
    backend_set = {Precision.parse(p) for p in supported}
    if wanted not in backend_set:
        raise ConfigError(
            f"backend {backend_name!r} does not run --precision {wanted}; it runs {_names(backend_set)}"
        )
    if device != "cpu":
        return wanted
    cpu = cpu or cpu_capabilities()
    if not cpu.supports(wanted):
        usable = [p for p in backend_set if cpu.supports(p)]
        raise ConfigError(
            f"--precision {wanted} needs a CPU with {' or '.join(_NEEDS[wanted])}, which this CPU "
            f"({cpu.model}) lacks; backend {backend_name!r} can run {_names(usable)} here"
        )
    return wanted
