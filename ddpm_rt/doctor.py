"""What is installed and which backends can run here: the facts behind `ddpm-rt doctor`.

Module import is cheap: torch, onnxruntime and tensorrt are imported inside the functions that
report on them. The one-line "what is missing" messages of the GPU paths live in
`ddpm_rt.gpu.availability`.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from typing import Any


def _torch_facts() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"installed": False}
    import torch

    facts: dict[str, Any] = {
        "installed": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,  # None for a CPU-only build
        "cuda_available": bool(torch.cuda.is_available()),
    }
    if facts["cuda_available"]:
        facts["devices"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            facts["devices"].append({
                "index": i,
                "name": p.name,
                "compute_capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
            })
        facts["cudnn"] = torch.backends.cudnn.version()
    return facts


def _onnxruntime_facts() -> dict[str, Any]:
    if importlib.util.find_spec("onnxruntime") is None:
        return {"installed": False}
    import onnxruntime

    return {
        "installed": True,
        "version": onnxruntime.__version__,
        "providers": list(onnxruntime.get_available_providers()),
    }


def _tensorrt_facts() -> dict[str, Any]:
    if importlib.util.find_spec("tensorrt") is None:
        return {"installed": False}
    try:
        import tensorrt

        return {"installed": True, "version": tensorrt.__version__}
    except Exception as e:  # noqa: BLE001 - a broken install is a fact to report, not a crash
        return {"installed": True, "version": None, "import_error": f"{type(e).__name__}: {e}"}


def collect() -> dict[str, Any]:
    """The doctor report as plain data (JSON-serialisable)."""
    import ddpm_rt
    from ddpm_rt.gpu.probe import proven
    from ddpm_rt.registry import REGISTRY, available_backends, unavailable_reason

    backends = {}
    for name in sorted(REGISTRY, key=lambda n: -REGISTRY[n].rank):
        reason = unavailable_reason(name)
        backends[name] = {"available": reason is None, "reason": reason, "summary": REGISTRY[name].summary}
        if REGISTRY[name].gpu:
            backends[name]["parity_probe"] = proven(name) if reason is None else None
    # auto never takes a GPU backend before its first-use parity probe passed here
    usable = [n for n in available_backends()
              if not REGISTRY[n].gpu or (backends[n].get("parity_probe") or {}).get("ok")]
    from ddpm_rt.precision import cpu_capabilities

    cpu = cpu_capabilities()
    return {
        "ddpm_rt": ddpm_rt.__version__,
        "cpu": {"model": cpu.model, "isa": cpu.isa_class,
                "precisions": [p.value for p in cpu.available()]},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "torch": _torch_facts(),
        "onnxruntime": _onnxruntime_facts(),
        "tensorrt": _tensorrt_facts(),
        "backends": backends,
        "auto": usable[0] if usable else None,
    }


def render(report: dict[str, Any]) -> str:
    """The report as aligned text lines."""
    lines = [f"ddpm-rt {report['ddpm_rt']} · python {report['python']} · {report['platform']}",
             f"cpu          {report['cpu']['model']} ({report['cpu']['isa']}; native precisions: "
             f"{', '.join(report['cpu']['precisions'])}); `sample --backend auto` ranks the CPU candidates "
             "that pass the quality guard by measured speed (see `ddpm-rt inspect BUNDLE`)"]
    t = report["torch"]
    if t["installed"]:
        cuda = f"CUDA build {t['cuda_build']}" if t["cuda_build"] else "CPU-only build"
        lines.append(f"torch        {t['version']} ({cuda}; cuda available: {t['cuda_available']})")
        for d in t.get("devices", []):
            lines.append(
                f"  gpu {d['index']}      {d['name']} (sm {d['compute_capability']}, {d['memory_gib']} GiB)"
            )
    else:
        lines.append("torch        not installed")
    o = report["onnxruntime"]
    lines.append(
        f"onnxruntime  {o['version']} (providers: {', '.join(o['providers'])})" if o["installed"]
        else "onnxruntime  not installed"
    )
    r = report["tensorrt"]
    if not r["installed"]:
        lines.append("tensorrt     not installed")
    else:
        lines.append(f"tensorrt     {r['version'] or 'broken: ' + r.get('import_error', '?')}")
    lines.append("backends (fastest first):")
    for name, b in report["backends"].items():
        mark = "yes" if b["available"] else "no "
        tail = b["summary"] if b["available"] else b["reason"]
        if b["available"] and "parity_probe" in b:
            probe = b["parity_probe"]
            tail += (" — not yet probed: auto tries it on first use" if probe is None else
                     f" — parity probe {'passed' if probe.get('ok') else 'FAILED'} "
                     f"({probe.get('error') or 'rel. error ' + format(probe.get('rel_rms', 0.0), '.2g')})")
        lines.append(f"  {mark} {name:<11} {tail}")
    lines.append(f"auto picks: {report['auto'] or 'nothing (install torch)'}")
    return "\n".join(lines)
