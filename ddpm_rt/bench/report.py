"""Text and Markdown renderings of a bench result (the JSON is the record; these are views)."""

from __future__ import annotations

from typing import Any


def _busy(env: dict[str, Any]) -> str:
    v = env.get("cpu_busy_before")
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _pct(share: dict[str, float] | None) -> str:
    return "n/a" if not share else f"{100 * share['median']:.1f}%"


def _diff(v: float | None, none: str = "n/a") -> str:
    return none if v is None else f"{v:.1e}"


def backend_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per (batch, backend): the figures `ddpm-rt bench` promises."""
    rows = []
    base = result["config"]["baseline"]
    for r in result["results"]:
        e2e, step, call = r["e2e_s"], r["step_ms"], r["call_ms"]
        rows.append([
            str(r["batch"]),
            r["backend"],
            f"{e2e['median']:.4f} ({100 * e2e['spread']:.0f}%)",
            f"{step['median']:.3f} / {step['p90']:.3f}",
            "n/a" if call is None else f"{call['median']:.3f}",
            _pct(r["outside_call_share"]),
            f"{r['images_per_s']:.3g}",
            "" if r["speedup_vs_baseline"] is None else f"{r['speedup_vs_baseline']:.2f}x",
            f"{r['rss_delta_mb']:.0f}",
            "(baseline)" if r["backend"] == base else
            f"{_diff(r['max_abs_diff_vs_baseline'])} (1st call {_diff(r.get('max_abs_diff_first_call'))})",
        ])
    return rows


HEADER = ["batch", "backend", "e2e s median (p10-p90 spread)", "step ms median / p90",
          "call ms median", "outside call", "images/s", "speed-up", "RSS +MB", "max |diff| vs eager: final (first call)"]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def pipeline_rows(pipe: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["runner", "e2e s median (spread)", "images/s", "speed-up vs DDIMPipeline",
              "outside call", "max |diff| vs pipeline"]
    rows = [[
        r["runner"], f"{r['e2e_s']['median']:.3f} ({100 * r['e2e_s']['spread']:.0f}%)",
        f"{r['images_per_s']:.3g}", f"{r['speedup_vs_pipeline']:.2f}x",
        _pct(r["outside_call_share"]), f"{r['max_abs_diff_vs_pipeline']:.1e}",
    ] for r in pipe["results"]]
    return header, rows


def summary_line(result: dict[str, Any]) -> str:
    env, plan, cfg = result["environment"], result["plan"], result["config"]
    return (f"{result['source']} · {plan['sampler']} {plan['steps']} steps · threads {cfg['threads']} · "
            f"warm-up {cfg['warmup']}, {cfg['repeat']} timed runs · {env['cpu']} "
            f"({env['usable_cores']} usable cores) · load {env['loadavg_start']} -> {env.get('loadavg_end')}")


def text_report(result: dict[str, Any]) -> str:
    parts = [summary_line(result), "", text_table(HEADER, backend_rows(result)), *_floor_lines(result)]
    for name, reason in result.get("skipped", {}).items():
        parts.append(f"skipped {name}: {reason}")
    if result.get("pipeline"):
        parts += ["", "diffusers DDIMPipeline (eager) vs our loop, batch "
                  f"{result['pipeline']['batch']}:", text_table(*pipeline_rows(result["pipeline"]))]
    return "\n".join(parts)


def _floor_lines(result: dict[str, Any]) -> list[str]:
    floors = {r["batch"]: r.get("baseline_1ulp_sensitivity") for r in result["results"]
              if r["backend"] == result["config"]["baseline"]}
    if not any(v is not None for v in floors.values()):
        return []
    text = ", ".join(f"batch {b}: {v:.1e}" for b, v in floors.items() if v is not None)
    return [
        f"Trajectory sensitivity: eager against eager with x_T moved by 1 ulp — {text}. A backend "
        "whose final samples differ from eager by about this much agrees with eager as closely as "
        "fp32 allows on this trajectory; the first-call column is the per-call agreement.", "",
    ]


def overhead_notes(result: dict[str, Any]) -> list[str]:
    """One line per (backend, batch): the share of the loop spent outside the denoiser call."""
    lines = []
    for r in result["results"]:
        share = r["outside_call_share"]
        if share:
            lines.append(f"- {r['backend']}, batch {r['batch']}: {100 * share['median']:.1f}% of the loop "
                         f"outside the denoiser call (median of {share['n']} runs; max {100 * share['max']:.1f}%)")
    return lines


def markdown_report(result: dict[str, Any], title: str, notes: list[str] | None = None) -> str:
    env, plan, cfg = result["environment"], result["plan"], result["config"]
    lines = [
        f"# {title}", "",
        f"- model: `{result['source']}`{' (untrained weights)' if result['untrained'] else ''}, "
        f"sample shape {result['sample_shape']}",
        f"- plan: {plan['sampler']} {plan['steps']} steps (eta {plan['eta']}, {plan['spacing']} spacing, "
        f"clip {plan['clip']}, stochastic {plan['stochastic']}); the same initial and per-step noise "
        "for every backend",
        f"- machine: {env['cpu']}, {env['usable_cores']} usable cores ({env['host_cpus']} on the host), "
        f"{env['os']}",
        f"- versions: python {env['python']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"numpy {env['numpy']}" + (f", diffusers {env['diffusers']}" if env.get("diffusers") else ""),
        f"- threads: {cfg['threads']} for every backend (torch.set_num_threads, ORT intra-op; "
        "ORT inter-op 1, sequential)",
        f"- runs: {cfg['warmup']} warm-up + {cfg['repeat']} timed per backend and batch, interleaved "
        "round-robin in one process",
        f"- load average (1, 5, 15 min) at start {env['loadavg_start']}, at end {env.get('loadavg_end')}; "
        f"{_busy(env)} of all cores busy with other work in the second before the run"
        " — the machine is shared, so absolute times are noisy; ratios are measured side by side",
        f"- date: {env['date']}", "",
        md_table(HEADER, backend_rows(result)), "",
        *_floor_lines(result),
        "e2e = one full N-step loop; step = one call plus its update; outside call = share of the loop "
        "spent outside the denoiser call; RSS +MB = " + result["memory_method"].split("; ", 1)[1] + ".",
    ]
    if result.get("pipeline"):
        p = result["pipeline"]
        lines += ["", f"## diffusers DDIMPipeline (eager) vs our loop: {p['steps']} steps, batch {p['batch']}",
                  "", md_table(*pipeline_rows(p)), "", p["note"] + "."]
    overhead = overhead_notes(result)
    if overhead:
        lines += ["", "## Per-step overhead (tiny models are dominated by it)", "", *overhead]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"
