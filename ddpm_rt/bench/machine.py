"""What a benchmark ran on: CPU, cores, versions, threads, load and date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from typing import Any


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


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "?"))


def environment(threads: int | None) -> dict[str, Any]:
    """Machine and software facts recorded with every result."""
    import numpy as np

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(terse=True),
        "usable_cores": usable_cores(),
        "host_cpus": os.cpu_count(),
        "threads": threads,
        "loadavg_start": load_average(),
        "cpu_busy_before": busy_share(),  # share of all cores busy with other work, 1 s before
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "diffusers": _version("diffusers") if "diffusers" in sys.modules else None,
    }
    try:
        import onnxruntime as ort

        env["ort_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    return env
