"""The reverse loop with every buffer on the device, optionally captured whole in one CUDA graph.

Shared by the torch-cuda and trt backends: they differ only in the denoiser call
``denoise(x, t, out)``, which must write the model output into ``out`` (torch:
``out.copy_(module(x, t))``; TensorRT: tensor addresses + ``execute_async_v3`` on
the current stream).

For one (plan, batch, sample shape) everything is allocated once (torch tensors as
the allocator): x, t, out, the ring of converted outputs d (H + 1 slots for a multistep
plan, one slot for the clipped x0^ of a clip plan, none otherwise), the per-step noise and
the plan's coefficient tables. A step then does, on one stream and with no host→device
copy and no allocation of its own (same math and order as ``runtime.loop.sample_loop``):

    t     <- timesteps[i]                          fill from the device table
    out   <- denoise(x, t)
    d_i   <- [clip](cx[i]·x + co[i]·out)           plans that convert, into ring[slot(i, 0)]
    x     <- a[i]·x + b[i]·out (+ p0[i]·d_i + Σ_j hist[i, j-1]·ring[slot(i, j)]) (+ sigma[i]·z[k])

slot(i, j) = plan.ring_slots[i, j] is a fixed buffer per step: nothing rotates on the host,
so a captured graph replays the same reads and writes. The ring is zeroed before each run.

Conditional models and edits run in the same loop (as the host loop does; `runtime.guidance`,
`ddpm_rt.editing`): the conditioning tensors live on the device; classifier-free guidance calls
``denoise`` once on static 2B buffers (x and t repeated, [labels; null]) or twice on B through one
conditioning buffer refilled in place, then combines u + w·(c − u) (and rescale) on the device.
RePaint undo rows skip the call; a mask replaces the known region after every calling row
(``torch.where`` on a static known buffer). Classifier guidance runs on host backends only.

Feature caching (`plan.with_feature_cache`, calls = 2): those rows call ``shallow(x, t, out)``
instead of ``denoise``; the pair shares one static feature buffer of the caller's (the full call
writes it, the shallow one reads it), so both are captured in the one CUDA graph like any call.

Noise convention (as in the host loop): step i uses noise only where it draws (`plan.noise_rows`). With
an rng the draws happen at those steps only, in order, each of shape x; with a caller
noise array [N, B, ...] row i is used at step i. The rows actually used are copied to
the device once per ``sample()``.

On CUDA everything runs on one dedicated (non-default) stream. With ``cuda_graph=True``
the first ``sample()`` for a given state warms up on that stream, captures all N steps
in one ``torch.cuda.CUDAGraph``, and every call (the first included) copies x_init and
the noise into the static buffers and replays.
A new batch, step count or plan builds a new state and captures anew. On CPU (tests)
the same loop runs without capture.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddpm_rt.editing import Edit
from ddpm_rt.errors import BackendUnavailable, ConfigError
from ddpm_rt.plan import SamplingPlan
from ddpm_rt.runtime.guidance import Guidance
from ddpm_rt.runtime.loop import ProgressFn

DenoiseFn = Callable[..., None]  # denoise(x, t, out, *cond): writes the model output into `out`

# plan.table() columns
_T, _A, _B, _SIGMA, _CX, _CO, _P0 = range(7)


def _plan_signature(plan: SamplingPlan, shape: tuple[int, ...], extra: str = "") -> str:
    h = hashlib.sha256(plan.table().tobytes())
    for column in (plan.hist, plan.kx, plan.kn, plan.calls):
        h.update(column.tobytes())
    h.update(repr((plan.steps, plan.clip, plan.depth, plan.init, shape, extra)).encode())
    return h.hexdigest()


@dataclass(eq=False)
class _Guided:
    """Device buffers of classifier-free guidance for one state."""

    scale: float
    rescale: float
    cond: list[torch.Tensor]  # the conditioning the call reads: [labels; null] (2B) or one B buffer
    labels: list[torch.Tensor] = field(default_factory=list)  # split mode: refilled into `cond`
    null: list[torch.Tensor] = field(default_factory=list)
    x2: torch.Tensor | None = None  # batched mode: (2B, ...)
    t2: torch.Tensor | None = None
    out2: torch.Tensor | None = None
    c_out: torch.Tensor | None = None  # split mode: the conditional half


@dataclass(eq=False)
class _LoopState:
    """Static buffers for one (plan, batch, sample shape)."""

    signature: str
    steps: int
    x: torch.Tensor  # (B, ...) the running sample
    t: torch.Tensor  # (B,) the model's time input
    out: torch.Tensor  # (B, ...) the model output
    ring: torch.Tensor | None  # (H + 1, B, ...) converted outputs d (plans that convert)
    ring_rows: list[torch.Tensor]  # ring_rows[k]: view of slot k, made once
    slots: list[list[int]]  # slots[i][j]: ring slot of d_{i-j} (plan.ring_slots)
    table: torch.Tensor  # (N, 7) coefficient table on the device
    rows: list[list[torch.Tensor]]  # rows[col][i]: 0-d views into `table`, made once
    hist_rows: list[list[torch.Tensor]]  # hist_rows[j-1][i]: 0-d views of plan.hist on the device
    clip: tuple[float, float] | None
    noise_steps: np.ndarray  # (K,) steps with sigma > 0, in order
    noise_slot: list[int | None]  # step i -> row of `z`, or None
    z: torch.Tensor | None  # (K, B, ...) per-step noise on the device
    z_rows: list[torch.Tensor]  # z_rows[k]: view of row k, made once
    x_stage: torch.Tensor  # (B, ...) host staging for x_init (pinned on CUDA)
    z_stage: torch.Tensor | None  # (K, B, ...) host staging for the noise
    guided: _Guided | None = None  # classifier-free guidance buffers (conditional models)
    cond: list[torch.Tensor] = field(default_factory=list)  # conditioning of an unguided call
    image: torch.Tensor | None = None  # edit: (B, ...) the image (start and known region)
    mask: torch.Tensor | None = None  # edit: (B, ...) bool, True = known
    known: torch.Tensor | None = None  # edit: (B, ...) the known region of the current row
    calls: list[int] = field(default_factory=list)  # plan.calls: 0 = undo row (no call)
    kx: list[torch.Tensor] = field(default_factory=list)  # 0-d views, the known-region coefficients
    kn: list[torch.Tensor] = field(default_factory=list)
    init: tuple[float, float] = (0.0, 1.0)
    graph: Any = None  # torch.cuda.CUDAGraph once captured
    replays: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class DeviceLoop:
    """Runs a SamplingPlan with `denoise(x, t, out)` on `device`, buffers allocated once per state."""

    def __init__(
        self,
        denoise: DenoiseFn,
        device: str | torch.device = "cuda",
        *,
        cuda_graph: bool = True,
        warmup: int = 1,
        shallow: DenoiseFn | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.shallow = shallow  # feature caching: the shallow call of the plan's cached rows
        if self.device.type == "cuda" and not torch.cuda.is_available():
            from ddpm_rt.gpu.availability import CUDA_MISSING

            raise BackendUnavailable(CUDA_MISSING)
        self.denoise = denoise
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.warmup = max(int(warmup), 1)
        self._state: _LoopState | None = None
        # A dedicated stream: graph capture needs a non-default stream, and TensorRT's
        # enqueue on the legacy default stream adds synchronisations.
        self._stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

    # -- state -------------------------------------------------------------------------------

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """The dedicated stream every step runs on (None on the CPU); ORT backends share it."""
        return self._stream

    @property
    def state(self) -> _LoopState | None:
        return self._state

    @property
    def captures(self) -> int:
        """1 when the current state has a captured graph (for tests and reports)."""
        return int(self._state is not None and self._state.graph is not None)

    def _state_for(self, plan: SamplingPlan, shape: tuple[int, ...], guidance: Guidance | None = None,
                   edit: Edit | None = None) -> _LoopState:
        extra = "" if guidance is None else repr((guidance.scale, guidance.rescale, guidance.mode,
                                                   [(k, v.tobytes()) for k, v in guidance.cond.items()]))
        extra += "" if edit is None else repr((edit.image is not None, edit.mask is not None))
        sig = _plan_signature(plan, shape, hashlib.sha256(extra.encode()).hexdigest())
        if self._state is not None and self._state.signature == sig:
            return self._state
        self._state = None  # drop the old buffers and graph before allocating new ones
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        dev, f32 = self.device, torch.float32
        pin = self.device.type == "cuda"
        table = torch.from_numpy(plan.table()).to(dev)  # (N, 7), one copy per state
        hist = torch.from_numpy(np.ascontiguousarray(plan.hist.T)).to(dev)  # (H, N)
        known = torch.from_numpy(np.stack([plan.kx, plan.kn])).to(dev)  # (2, N)
        ring = torch.zeros((plan.depth + 1, *shape), dtype=f32, device=dev) if plan.converts else None
        masked = edit is not None and edit.mask is not None
        noise_steps = np.flatnonzero(plan.noise_rows(masked))
        slot: list[int | None] = [None] * plan.steps
        for k, i in enumerate(noise_steps):
            slot[int(i)] = k
        k = len(noise_steps)
        z = torch.empty((k, *shape), dtype=f32, device=dev) if k else None
        image, mask = (None, None) if edit is None else edit.arrays(shape)
        st = _LoopState(
            signature=sig,
            steps=plan.steps,
            x=torch.empty(shape, dtype=f32, device=dev),
            t=torch.empty(shape[:1], dtype=f32, device=dev),
            out=torch.empty(shape, dtype=f32, device=dev),
            ring=ring,
            ring_rows=list(ring.unbind(0)) if ring is not None else [],
            slots=plan.ring_slots.tolist(),
            table=table,
            rows=[list(table[:, c].unbind(0)) for c in range(7)],
            hist_rows=[list(hist[j].unbind(0)) for j in range(plan.depth)],
            clip=plan.clip,
            noise_steps=noise_steps,
            noise_slot=slot,
            z=z,
            z_rows=list(z.unbind(0)) if z is not None else [],
            x_stage=torch.empty(shape, dtype=f32, pin_memory=pin),
            z_stage=torch.empty((k, *shape), dtype=f32, pin_memory=pin) if k else None,
            image=None if image is None else torch.from_numpy(image).to(dev),
            mask=None if mask is None else torch.from_numpy(mask).to(dev),
            known=torch.empty(shape, dtype=f32, device=dev) if mask is not None else None,
            calls=plan.calls.tolist(),
            kx=list(known[0].unbind(0)),
            kn=list(known[1].unbind(0)),
            init=plan.init,
        )
        if guidance is not None:
            self._guidance_buffers(st, guidance, shape)
        return self._set_state(st)

    def _guidance_buffers(self, st: _LoopState, g: Guidance, shape: tuple[int, ...]) -> None:
        if g.classifier_scale:
            raise ConfigError("classifier guidance runs on the host backends (ort, openvino, torch); "
                              "the device loop runs classifier-free guidance only: drop --classifier-scale")
        dev, batch = self.device, shape[0]
        cond = [torch.from_numpy(np.ascontiguousarray(g.cond[c.name])).to(dev) for c in g.inputs]
        if not g.doubled:
            st.cond = cond if g.scale == 1.0 else [torch.from_numpy(c.null_values(batch)).to(dev) for c in g.inputs]
            return
        null = [torch.from_numpy(c.null_values(batch)).to(dev) for c in g.inputs]
        if g.mode == "batched":
            st.guided = _Guided(g.scale, g.rescale, [torch.cat([c, n]) for c, n in zip(cond, null, strict=True)],
                                x2=torch.empty((2 * batch, *shape[1:]), dtype=torch.float32, device=dev),
                                t2=torch.empty((2 * batch,), dtype=torch.float32, device=dev),
                                out2=torch.empty((2 * batch, *shape[1:]), dtype=torch.float32, device=dev))
        else:
            st.guided = _Guided(g.scale, g.rescale, [c.clone() for c in cond], labels=cond, null=null,
                                c_out=torch.empty(shape, dtype=torch.float32, device=dev))

    def _set_state(self, st: _LoopState) -> _LoopState:
        self._state = st
        return st

    # -- the loop ----------------------------------------------------------------------------

    def _model(self, st: _LoopState) -> None:
        """st.out <- the (guided) model output at st.x, st.t."""
        g = st.guided
        if g is None:
            self.denoise(st.x, st.t, st.out, *st.cond)
            return
        b = st.x.shape[0]
        if g.x2 is not None:  # one call of 2B: [x; x], [t; t], [labels; null]
            g.x2[:b].copy_(st.x)
            g.x2[b:].copy_(st.x)
            g.t2[:b].copy_(st.t)
            g.t2[b:].copy_(st.t)
            self.denoise(g.x2, g.t2, g.out2, *g.cond)
            c, u = g.out2[:b], g.out2[b:]
        else:  # two calls of B through one conditioning buffer, refilled in place
            for buf, src in zip(g.cond, g.labels, strict=True):
                buf.copy_(src)
            self.denoise(st.x, st.t, g.c_out, *g.cond)
            for buf, src in zip(g.cond, g.null, strict=True):
                buf.copy_(src)
            self.denoise(st.x, st.t, st.out, *g.cond)
            c, u = g.c_out, st.out
        dims = tuple(range(1, st.out.ndim))
        std_c = c.std(dim=dims, keepdim=True) if g.rescale else None  # before c is overwritten (split)
        # out = u + w·(c − u), in the host loop's order
        if u is st.out:  # split: c is its own buffer
            c.sub_(u).mul_(g.scale)
            st.out.add_(c)
        else:
            torch.sub(c, u, out=st.out)
            st.out.mul_(g.scale).add_(u)
        if std_c is not None:
            st.out.mul_(std_c / st.out.std(dim=dims, keepdim=True) * g.rescale + (1.0 - g.rescale))

    def _step(self, st: _LoopState, i: int) -> None:
        r = st.rows
        k = st.noise_slot[i]
        if st.calls[i] == 0:  # RePaint undo row: x <- a·x + sigma·z, no model call
            st.x.mul_(r[_A][i])
            if k is not None:
                st.x.addcmul_(st.z_rows[k], r[_SIGMA][i])
            return
        st.t.fill_(r[_T][i])  # from the device table: no host->device copy
        if st.calls[i] == 2:  # a feature-cache row: the shallow graph on the kept deep feature
            assert self.shallow is not None
            self.shallow(st.x, st.t, st.out)
        else:
            self._model(st)
        slots = st.slots[i]
        d = st.ring_rows[slots[0]] if st.ring is not None else None
        if d is not None:
            # d_i = [clip](cx·x + co·out) before x is overwritten
            torch.mul(st.x, r[_CX][i], out=d)
            d.addcmul_(st.out, r[_CO][i])
            if st.clip is not None:
                d.clamp_(st.clip[0], st.clip[1])
        # x_prev = a·x + b·out (+ p0·d_i + Σ_j hist_j·d_{i-j}) + sigma·z
        st.x.mul_(r[_A][i])
        st.x.addcmul_(st.out, r[_B][i])
        if d is not None:
            st.x.addcmul_(d, r[_P0][i])
            for j, h in enumerate(st.hist_rows, start=1):  # fixed slots: replay-safe
                st.x.addcmul_(st.ring_rows[slots[j]], h[i])
        if k is not None:  # sigma is 0 on a masked row that draws only for its known region
            st.x.addcmul_(st.z_rows[k], r[_SIGMA][i])
        if st.mask is not None:
            # the known region: the image noised to this row's output level, from the row's own z
            torch.mul(st.image, st.kx[i], out=st.known)
            if k is not None:
                st.known.addcmul_(st.z_rows[k], st.kn[i])
            torch.where(st.mask, st.known, st.x, out=st.x)

    def _run(self, st: _LoopState, progress: ProgressFn | None) -> None:
        for i in range(st.steps):
            self._step(st, i)
            if progress is not None:
                progress(i + 1, st.steps)

    def _capture(self, st: _LoopState) -> None:
        # Runs with self._stream current (a side stream, never the legacy default stream).
        # Warm up first (cuBLAS/cuDNN handles, TensorRT's deferred setup before its first
        # capture, the caching allocator), then record all N steps into one graph.
        for _ in range(self.warmup):
            self._run(st, None)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                self._run(st, None)
        except RuntimeError as e:
            self._state = None  # the half-captured state is not reusable
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BackendUnavailable(
                f"CUDA graph capture of the sampling loop failed ({first}); run with cuda_graph off"
            ) from e
        st.graph = graph

    # -- public ------------------------------------------------------------------------------

    @staticmethod
    def _start(st: _LoopState) -> None:
        """x <- x_init (with an edit image: ix·image + in·z, z = x_init); the ring zeroed."""
        st.x.copy_(st.x_stage, non_blocking=True)
        if st.image is not None:
            st.x.mul_(st.init[1]).add_(st.image, alpha=st.init[0])
        if st.ring is not None:
            st.ring.zero_()  # d's before step 0 have weight 0 but must be finite

    def _load_inputs(
        self,
        st: _LoopState,
        x_init: np.ndarray,
        noise: np.ndarray | None,
        rng: np.random.Generator | None,
    ) -> None:
        st.x_stage.numpy()[...] = x_init
        self._start(st)
        if st.z is None:
            return
        assert st.z_stage is not None
        z_host = st.z_stage.numpy()  # (K, B, ...)
        if noise is not None:
            np.copyto(z_host, noise[st.noise_steps], casting="same_kind")
        else:
            if rng is None:
                rng = np.random.default_rng()
            for k in range(len(st.noise_steps)):  # one draw per noisy step, in order
                rng.standard_normal(dtype=np.float32, out=z_host[k])
        st.z.copy_(st.z_stage, non_blocking=True)

    def sample(
        self,
        plan: SamplingPlan,
        x_init: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        progress: ProgressFn | None = None,
        guidance: Guidance | None = None,
        edit: Edit | None = None,
    ) -> np.ndarray:
        """Run every step of `plan` from `x_init`; same contract as `runtime.loop.sample_loop` (and
        `Backend.sample` for `guidance`)."""
        x_init = np.asarray(x_init, dtype=np.float32)
        if plan.cached_calls and (self.shallow is None or guidance is not None):
            raise ConfigError("this device loop was built without the shallow call of feature caching"
                              if self.shallow is None else "feature caching does not run with guidance yet")
        if x_init.ndim < 2:
            raise ConfigError(f"x_init must be [B, ...] with a batch axis, got shape {x_init.shape}")
        shape = tuple(int(s) for s in x_init.shape)
        if noise is not None and noise.shape != (plan.steps, *shape):
            raise ConfigError(
                f"per-step noise must have shape {(plan.steps, *shape)}, got {tuple(noise.shape)}"
            )
        # everything on one stream: allocation, table and input copies, the steps (or
        # capture + replay) and the copy back
        on_stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with torch.no_grad(), on_stream:
            st = self._state_for(plan, shape, guidance, edit)
            self._load_inputs(st, x_init, noise, rng)
            if not self.cuda_graph:
                self._run(st, progress)
            else:
                if st.graph is None:
                    self._capture(st)
                    # warm-up ran on the static x and ring: restore the start and zero the ring
                    # (the noise buffer is only read)
                    self._start(st)
                st.graph.replay()
                st.replays += 1
                if progress is not None:
                    progress(st.steps, st.steps)
            return st.x.to("cpu", copy=True).numpy()

    def close(self) -> None:
        self._state = None
