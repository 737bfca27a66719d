"""What a benchmark ran on: the machine facts (`ddpm_rt.machine`) plus versions, threads and date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from typing import Any

from ddpm_rt.machine import busy_share, cpu_model, load_average, usable_cores


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
