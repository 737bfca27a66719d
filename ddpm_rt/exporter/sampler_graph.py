"""The sampler inside the graph: the denoiser plus the plan's update fused into one ONNX model.

Two graphs are built from a bundle's denoiser (its nodes copied under a ``den/`` prefix)
and a `SamplingPlan` (its tables stored as initializers, indexed with ``Gather``):

* **step graph** — one reverse step; the host loops ``step = 0 .. N-1``::

      inputs   x      float32 [B, ...]   the running sample (x_T ~ N(0, I) at step 0)
               step   int64   []         index into the plan (0 = first, noisiest step)
               noise  float32 [B, ...]   z ~ N(0, I); read only where sigma[step] > 0
               hist_j float32 [B, ...]   multistep plans only, j = 1..H: d_{step-j}, the
                                         converted output j steps back (zeros at step 0)
      outputs  x_prev      float32 [B, ...]
               hist_j_next float32 [B, ...]   multistep only: feed back as hist_j next step
                                              (hist_1_next = d_step, hist_j_next = hist_{j-1})

* **full-loop graph** (deterministic plans only) — every step in one ONNX ``Loop``::

      input    x_init float32 [B, ...]   x_T ~ N(0, I)
      output   x_0    float32 [B, ...]

  Multistep plans carry hist_1..hist_H as loop state too (zeros before the first step).

Per step, with the plan's row i (see `ddpm_rt.plan`)::

    t      = Expand(timesteps[i], [B])                               # (B,)
    out    = denoiser(x, t)                                          # (B, ...)
    d      = [clip](cx_i·x + co_i·out)                               # plans that convert
    x_prev = a_i·x + b_i·out [+ p0_i·d + Σ_j hist_i,j·hist_j] + sigma_i·z

The term order matches `runtime.loop.sample_loop`, so both agree to float rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ddpm_rt.errors import ExportError
from ddpm_rt.plan import SamplingPlan

PREFIX = "den/"  # every copied denoiser name lives under this prefix
MIN_OPSET = 13  # Clip with tensor bounds, Loop with a scalar condition
GRAPH_KINDS = ("step", "loop")
# The denoiser contract (design.md): inputs x, t; one output.
DENOISER_INPUTS = ("x", "t")


def _rename_graph(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename every value in `graph` (and its subgraphs) in place: mapped names, else PREFIX+name."""

    def name(n: str) -> str:
        if not n:  # an omitted optional input stays omitted
            return n
        return mapping.get(n, PREFIX + n)

    for vi in (*graph.input, *graph.output, *graph.value_info):
        vi.name = name(vi.name)
    for init in graph.initializer:
        init.name = name(init.name)
    for node in graph.node:
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
        if node.name:
            node.name = PREFIX + node.name
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attr.g, mapping)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename_graph(g, mapping)


def _check_denoiser(model: onnx.ModelProto) -> int:
    """Check the denoiser contract; return its default-domain opset."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i.name for i in g.input if i.name not in inits]
    if tuple(inputs) != DENOISER_INPUTS or len(g.output) != 1:
        raise ExportError(
            f"the denoiser graph must have inputs (x, t) and one output, got inputs {inputs} "
            f"and outputs {[o.name for o in g.output]}; re-export the bundle with `ddpm-rt export`"
        )
    if len(g.sparse_initializer):
        raise ExportError("the denoiser graph has sparse initializers, which cannot be fused; re-export it dense")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ExportError(
            f"the denoiser uses opset {opset}; sampler graphs need opset >= {MIN_OPSET} "
            "(re-export the bundle with a newer opset)"
        )
    return opset


def _denoiser_parts(
    denoiser: onnx.ModelProto, x: str, t: str, out: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The denoiser's nodes and initializers, renamed so they read `x`, `t` and write `out`."""
    g = copy.deepcopy(denoiser.graph)
    _rename_graph(g, {"x": x, "t": t, g.output[0].name: out})
    return list(g.node), list(g.initializer)


def _scalar(name: str, value: float, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def history_names(plan: SamplingPlan) -> tuple[list[str], list[str]]:
    """Step-graph names of the history inputs (hist_1..hist_H) and of their next values."""
    ins = [f"hist_{j}" for j in range(1, plan.depth + 1)]
    return ins, [f"{n}_next" for n in ins]


def _columns(plan: SamplingPlan, noise: bool) -> tuple[str, ...]:
    """The plan columns a step reads, in table order (hist_j: column j-1 of plan.hist)."""
    return (("timesteps", "a", "b") + (("sigma",) if noise else ())
            + (("cx", "co", "p0") if plan.converts else ()) + tuple(history_names(plan)[0]))


def _column(plan: SamplingPlan, name: str) -> np.ndarray:
    if name.startswith("hist_"):
        return plan.hist[:, int(name.split("_")[1]) - 1]
    return getattr(plan, name)


def _plan_tables(plan: SamplingPlan, noise: bool) -> list[onnx.TensorProto]:
    """The plan as one float32 [N, K] table (a row per step, sampling order) plus small constants.

    One Gather of row `step` and one Split give every coefficient of a step: two nodes per
    step whatever K is, which matters in a Loop body around a tiny denoiser.
    """
    cols = _columns(plan, noise)
    table = np.stack([_column(plan, c) for c in cols], axis=1).astype(np.float32)  # (N, K)
    tabs = [numpy_helper.from_array(np.ascontiguousarray(table), "plan/table"),
            numpy_helper.from_array(np.ones(len(cols), dtype=np.int64), "plan/split"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "plan/zero1"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "plan/one1")]
    if plan.clip is not None:
        tabs += [_scalar("plan/clip_lo", plan.clip[0]), _scalar("plan/clip_hi", plan.clip[1])]
    return tabs


def _batch_nodes(x: str, batch: str, tag: str) -> list[onnx.NodeProto]:
    """batch = Shape(x)[0:1], an int64 [1] tensor."""
    return [helper.make_node("Shape", [x], [f"x_shape{tag}"], name=f"shape{tag}"),
            helper.make_node("Slice", [f"x_shape{tag}", "plan/zero1", "plan/one1"], [batch], name=f"batch{tag}")]


def _step_nodes(
    plan: SamplingPlan, x: str, step: str, noise: str | None, x_prev: str, batch: str, tag: str,
    hist: tuple[list[str], list[str]] = ([], []),
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], str, str]:
    """Nodes of one step around the denoiser call: (before, after, t name, out name).

    `before` gathers row `step` and builds t (`batch` is an int64 [1] tensor holding B);
    `after` is the update, and for multistep plans moves `hist` = (inputs d_{i-1}..d_{i-H},
    outputs d_i..d_{i-H+1}) on by one step. Names are suffixed with `tag` so the same
    builder serves the main graph and a Loop body.
    """
    n = lambda s: f"{s}{tag}"  # noqa: E731 - a local naming helper
    t, out = n("t"), n("out")
    cols = _columns(plan, noise is not None)
    hist_in, hist_out = hist
    before = [
        # the coefficients of row `step`, each float32 [1] (broadcasts over (B, ...))
        helper.make_node("Gather", ["plan/table", step], [n("row")], name=n("row")),          # (K,)
        helper.make_node("Split", [n("row"), "plan/split"], [n(f"c_{c}") for c in cols], axis=0,
                         name=n("coefficients")),
        # t = Expand(timesteps[step], [B])                                    # (B,)
        helper.make_node("Expand", [n("c_timesteps"), batch], [t], name=n("t")),
    ]
    nodes = []
    if plan.converts:
        # d = [clip](cx·x + co·out), before the update (same order as the host loop)
        nodes += [
            helper.make_node("Mul", [x, n("c_cx")], [n("cxx")], name=n("cxx")),
            helper.make_node("Mul", [out, n("c_co")], [n("coo")], name=n("coo")),
            helper.make_node("Add", [n("cxx"), n("coo")], [n("d_raw")], name=n("d_raw")),
            helper.make_node("Clip", [n("d_raw"), "plan/clip_lo", "plan/clip_hi"], [n("d")], name=n("clip"))
            if plan.clip is not None else helper.make_node("Identity", [n("d_raw")], [n("d")], name=n("d")),
        ]
    nodes += [
        # x_prev = a·x + b·out ...                                            # (B, ...)
        helper.make_node("Mul", [x, n("c_a")], [n("ax")], name=n("ax")),
        helper.make_node("Mul", [out, n("c_b")], [n("bo")], name=n("bo")),
        helper.make_node("Add", [n("ax"), n("bo")], [n("lin")], name=n("lin")),
    ]
    acc = n("lin")
    if plan.converts:
        # ... + p0·d + Σ_j hist_j·d_{i-j}
        terms = [(n("d"), "p0")] + [(h, f"hist_{j}") for j, h in enumerate(hist_in, start=1)]
        for value, col in terms:
            nodes += [helper.make_node("Mul", [value, n(f"c_{col}")], [n(f"w_{col}")], name=n(f"w_{col}")),
                      helper.make_node("Add", [acc, n(f"w_{col}")], [n(f"acc_{col}")], name=n(f"acc_{col}"))]
            acc = n(f"acc_{col}")
        # the history moves on one step: d_i first, then d_{i-1} .. d_{i-H+1}
        for src, dst in zip([n("d"), *hist_in][: len(hist_out)], hist_out, strict=True):
            nodes.append(helper.make_node("Identity", [src], [dst], name=f"shift/{dst}"))
    if noise is not None:
        # ... + sigma·z  (sigma = 0 on deterministic rows: z is read but adds exactly 0)
        nodes += [
            helper.make_node("Mul", [noise, n("c_sigma")], [n("sz")], name=n("sz")),
            helper.make_node("Add", [acc, n("sz")], [x_prev], name=n("x_prev")),
        ]
    else:
        nodes.append(helper.make_node("Identity", [acc], [x_prev], name=n("x_prev")))
    return before, nodes, t, out


def _tensor_info(name: str, sample_shape: Iterable[int], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, ["batch", *sample_shape])


def _model(graph: onnx.GraphProto, denoiser: onnx.ModelProto, opset: int,
           metadata: dict[str, str]) -> onnx.ModelProto:
    others = [o for o in denoiser.opset_import if o.domain not in ("", "ai.onnx")]
    opsets = [helper.make_opsetid("", opset), *others]
    # the lowest IR version the opsets allow (8 for model-local functions), so that older
    # ONNX Runtime builds in hosts (Node, C++) load it; not the newest the onnx package writes
    ir = max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 8 if denoiser.functions else 0)
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ddpm-rt export-sampler",
                              ir_version=ir)
    model.functions.extend(denoiser.functions)  # model-local functions the denoiser calls
    helper.set_model_props(model, metadata)
    return model


def build_step_graph(
    denoiser: onnx.ModelProto, plan: SamplingPlan, sample_shape: tuple[int, ...], metadata: dict[str, str]
) -> onnx.ModelProto:
    """One fused reverse step: (x, step, noise) -> x_prev."""
    opset = _check_denoiser(denoiser)
    hist = history_names(plan)
    before, after, t, out = _step_nodes(plan, "x", "step", "noise", "x_prev", "batch", tag="", hist=hist)
    den_nodes, den_inits = _denoiser_parts(denoiser, "x", t, out)
    graph = helper.make_graph(
        [*_batch_nodes("x", "batch", ""), *before, *den_nodes, *after],
        "ddpm_rt_step",
        inputs=[_tensor_info("x", sample_shape),
                helper.make_tensor_value_info("step", TensorProto.INT64, []),
                _tensor_info("noise", sample_shape),
                *(_tensor_info(h, sample_shape) for h in hist[0])],
        outputs=[_tensor_info("x_prev", sample_shape), *(_tensor_info(h, sample_shape) for h in hist[1])],
        initializer=[*_plan_tables(plan, noise=True), *den_inits],
    )
    return _model(graph, denoiser, opset, metadata)


def build_loop_graph(
    denoiser: onnx.ModelProto, plan: SamplingPlan, sample_shape: tuple[int, ...], metadata: dict[str, str]
) -> onnx.ModelProto:
    """Every step in one ONNX Loop (trip count N, loop-carried x): x_init -> x_0.

    Only for deterministic plans (sigma = 0 on every row); the caller checks.
    """
    assert not plan.stochastic, "the full-loop graph has no noise input"
    opset = _check_denoiser(denoiser)
    # Loop body: (iteration i, cond, x_i) -> (cond, x_{i+1}). The denoiser's weights are
    # initializers of the body itself, not read from the outer scope: ONNX Runtime's CPU
    # layout rewrite (NCHWc convolutions) must re-pack a Conv's weights in the Conv's own
    # graph, so with outer-scope weights a Loop body would run slower, different kernels
    # than a plain denoiser session. The small plan table and B (computed once, from x_init)
    # stay in the main graph.
    h_in, h_out = (["body/" + h for h in names] for names in history_names(plan))
    before, after, t, out = _step_nodes(plan, "body/x", "body/i", None, "body/x_next", "loop/batch",
                                        tag="@body", hist=(h_in, h_out))
    den_nodes, den_inits = _denoiser_parts(denoiser, "body/x", t, out)
    body = helper.make_graph(
        [*before, *den_nodes, *after,
         helper.make_node("Identity", ["body/cond"], ["body/cond_out"], name="body/cond")],
        "ddpm_rt_loop_body",
        inputs=[helper.make_tensor_value_info("body/i", TensorProto.INT64, []),
                helper.make_tensor_value_info("body/cond", TensorProto.BOOL, []),
                _tensor_info("body/x", sample_shape), *(_tensor_info(h, sample_shape) for h in h_in)],
        outputs=[helper.make_tensor_value_info("body/cond_out", TensorProto.BOOL, []),
                 _tensor_info("body/x_next", sample_shape), *(_tensor_info(h, sample_shape) for h in h_out)],
        initializer=den_inits,
    )
    # multistep: hist_1..hist_H are loop-carried state, zeros before the first step
    zeros = [helper.make_node("Shape", ["x_init"], ["loop/x_shape"], name="loop/x_shape"),
             helper.make_node("ConstantOfShape", ["loop/x_shape"], ["loop/zeros"], name="loop/zeros",
                              value=numpy_helper.from_array(np.zeros(1, np.float32)))] if h_in else []
    loop = helper.make_node("Loop", ["loop/trip_count", "loop/cond", "x_init", *(["loop/zeros"] * len(h_in))],
                            ["x_0", *(f"loop/hist_{j}_final" for j in range(1, len(h_in) + 1))],
                            name="sampler_loop", body=body)
    graph = helper.make_graph(
        [*_batch_nodes("x_init", "loop/batch", "@main"), *zeros, loop],
        "ddpm_rt_full_loop",
        inputs=[_tensor_info("x_init", sample_shape)],
        outputs=[_tensor_info("x_0", sample_shape)],
        initializer=[_scalar("loop/trip_count", plan.steps, np.int64),
                     numpy_helper.from_array(np.array(True), "loop/cond"),
                     *_plan_tables(plan, noise=False)],
    )
    return _model(graph, denoiser, opset, metadata)


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker on the fused model, as an ExportError."""
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        raise ExportError(f"the fused sampler graph is not valid ONNX: {first}") from None

