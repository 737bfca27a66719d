"""Conditioning inputs of a denoiser ``out = f(x, t, *cond)``: what each one is and its null value.

A model declares its conditioning in its `DiffusionSpec` (and so in every manifest, checkpoint
config and catalog entry) as a tuple of `CondInput`, in the order the graph and the torch module
take them after ``x`` and ``t``:

    class label   {"name": "class_labels", "kind": "class", "num_classes": 10, "null": 10}
                  int64 [B]; ids 0..num_classes-1, `null` = the id trained as "no label"
    tensor        {"name": "cond", "kind": "tensor", "shape": [16], "range": [-1, 1], "null": 0.0}
                  float32 [B, *shape]; `null` = the fill value trained as "unconditional"

`null` is None when the model never learned an unconditional input: classifier-free guidance
and sampling without a label are then refused. Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ddpm_rt.errors import ConfigError

KINDS = ("class", "tensor")
DTYPES = {"class": "int64", "tensor": "float32"}
CLASS_LABELS = "class_labels"  # the name diffusers' UNet2DModel gives its class input


@dataclass(frozen=True)
class CondInput:
    """One conditioning input of the denoiser graph (after ``x`` and ``t``)."""

    name: str
    kind: str  # class | tensor
    shape: tuple[int, ...] = ()  # one sample's shape, no batch ((), for a class label)
    num_classes: int | None = None  # class only
    null: float | None = None  # the unconditional value (a class id, or a fill value); None = none learned
    range: tuple[float, float] | None = None  # tensor only: the values it was trained on

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"conditioning {self.name!r}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not self.name.isidentifier() or self.name in ("x", "t", "out"):
            raise ConfigError(f"conditioning input name {self.name!r} must be an identifier other than x, t, out")
        if self.kind == "class":
            if self.shape != () or not self.num_classes or self.num_classes < 1:
                raise ConfigError(f"class conditioning {self.name!r} needs num_classes >= 1 and no shape")
            if self.null is not None and not float(self.null).is_integer():
                raise ConfigError(f"class conditioning {self.name!r}: the null label must be an integer id")
        elif self.num_classes is not None or any(d < 1 for d in self.shape):
            raise ConfigError(f"tensor conditioning {self.name!r}: positive shape, no num_classes")

    @property
    def dtype(self) -> str:
        return DTYPES[self.kind]

    @property
    def np_dtype(self) -> type:
        return np.int64 if self.kind == "class" else np.float32

    @property
    def has_null(self) -> bool:
        return self.null is not None

    def describe(self) -> str:
        if self.kind == "class":
            null = f", null label {int(self.null)}" if self.null is not None else ", no null label"
            return f"{self.name}: class label 0..{self.num_classes - 1}{null}"
        return f"{self.name}: float32 {list(self.shape)}" + ("" if self.null is None else f", null {self.null:g}")

    def check(self, values: Any, batch: int, where: str = "") -> np.ndarray:
        """`values` as a C-contiguous [batch, *shape] array of the right dtype; a one-line error otherwise.

        A class label may be given as one id (broadcast) or one per sample; the null id is allowed.
        """
        label = where or f"--{self.name.replace('_', '-')}"
        arr = np.asarray(values)
        if self.kind == "class":
            if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
                raise ConfigError(f"{label}: class labels must be integers, got {arr.dtype} values")
            if arr.dtype.kind not in "iuf":
                raise ConfigError(f"{label}: class labels must be integers, got dtype {arr.dtype}")
            arr = arr.astype(np.int64)
            if arr.ndim == 0:
                arr = np.full((batch,), int(arr), np.int64)
            if arr.shape != (batch,):
                raise ConfigError(f"{label}: {arr.size} label(s) for {batch} sample(s); give one label, or one per sample")
            allowed = set(range(self.num_classes)) | ({int(self.null)} if self.null is not None else set())
            bad = sorted({int(v) for v in np.unique(arr)} - allowed)
            if bad:
                raise ConfigError(f"{label}: label(s) {bad[:5]} out of range; this model takes 0..{self.num_classes - 1}"
                                  + (f" (and {int(self.null)} for no label)" if self.null is not None else ""))
            return np.ascontiguousarray(arr)
        if arr.dtype.kind not in "iuf":
            raise ConfigError(f"{label}: conditioning values must be numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
        if arr.shape == self.shape:
            arr = np.broadcast_to(arr, (batch, *self.shape))
        if arr.shape != (batch, *self.shape):
            raise ConfigError(f"{label}: shape {list(arr.shape)}, expected [{batch}, {', '.join(map(str, self.shape))}]")
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"{label}: conditioning values must be finite")
        return np.ascontiguousarray(arr)

    def null_values(self, batch: int) -> np.ndarray:
        """The unconditional input for `batch` samples (ConfigError when the model learned none)."""
        if self.null is None:
            raise ConfigError(f"{self.name}: this model learned no unconditional (null) input, so it cannot "
                              "sample without conditioning or with classifier-free guidance; give --guidance 1")
        return np.full((batch, *self.shape), self.null, dtype=self.np_dtype)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "dtype": self.dtype, "shape": list(self.shape)}
        if self.num_classes is not None:
            d["num_classes"] = self.num_classes
        d["null"] = None if self.null is None else (int(self.null) if self.kind == "class" else float(self.null))
        if self.range is not None:
            d["range"] = list(self.range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CondInput:
        try:
            kind = str(d["kind"])
            if "dtype" in d and d["dtype"] != DTYPES.get(kind):
                raise ConfigError(f"conditioning {d.get('name')!r}: dtype {d['dtype']!r} does not fit kind {kind!r}")
            rng = d.get("range")
            return cls(name=str(d["name"]), kind=kind, shape=tuple(int(s) for s in d.get("shape", ())),
                       num_classes=None if d.get("num_classes") is None else int(d["num_classes"]),
                       null=None if d.get("null") is None else float(d["null"]),
                       range=None if rng is None else (float(rng[0]), float(rng[1])))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"malformed conditioning entry {dict(d)!r}: {e}") from None


def parse_conditioning(entries: Sequence[Mapping[str, Any]] | None) -> tuple[CondInput, ...]:
    inputs = tuple(CondInput.from_dict(e) for e in (entries or ()))
    names = [c.name for c in inputs]
    if len(set(names)) != len(names):
        raise ConfigError(f"conditioning inputs must have distinct names, got {names}")
    return inputs


def check_conditioning(inputs: Sequence[CondInput], given: Mapping[str, Any] | None, batch: int) -> dict[str, np.ndarray]:
    """Every declared input checked and shaped for `batch` (ConfigError naming what is missing or extra)."""
    given = dict(given or {})
    extra = sorted(set(given) - {c.name for c in inputs})
    if extra:
        raise ConfigError(f"conditioning {', '.join(extra)} given, but this model takes "
                          + (", ".join(c.name for c in inputs) or "no conditioning"))
    missing = [c for c in inputs if c.name not in given]
    if missing:
        raise ConfigError("this model is conditional and needs " + "; ".join(c.describe() for c in missing)
                          + " (e.g. --class 3)")
    return {c.name: c.check(given[c.name], batch) for c in inputs}
