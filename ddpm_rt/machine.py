"""Facts about this machine and process: CPU model and features, usable cores, load, memory.

Standard library only (the CPU's features come from `ddpm_rt.precision`, read lazily), so every
layer may ask: `sample` reports its peak memory, `output` checks memory before any model work,
benchmarks and trainers name the CPU they ran on.
"""

from __future__ import annotations

import os
import platform

MB = 1024 * 1024


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def max_rss_bytes() -> int:
    """The process's RSS high-water mark so far (getrusage; KiB on Linux)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def peak_rss_mb() -> float:
    return round(max_rss_bytes() / MB, 1)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_model() -> str:
    """The CPU's model name and the matrix/vector features that decide its speed (results name both)."""
    from ddpm_rt.precision import cpu_capabilities

    cpu = cpu_capabilities()
    name = cpu.model or platform.processor() or platform.machine()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8") if f in cpu.flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'}{'' if 'amx_bf16' in isa else '; no AMX'})"


def usable_cores() -> int:
    """CPUs this process may run on (affinity), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def busy_share(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy (any process) over `seconds`, from /proc/stat; taken before a
    benchmark starts, it says how much of the machine other work was using."""
    import time

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except (OSError, ValueError):
        return None
    return round(1.0 - (i1 - i0) / max(t1 - t0, 1), 3)
