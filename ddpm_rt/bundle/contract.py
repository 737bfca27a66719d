"""The denoiser graph contract: one frozen spec read by the exporter, the ORT session and the TensorRT builder.

    x:   float32 [batch, *sample_shape]   the noisy sample
    t:   float32 [batch]                  the model's time input (meaning: manifest `timestep_meaning`)
    ...  conditioning inputs, if the model declares any (`ddpm_rt.conditioning`), in spec order:
         class_labels int64 [batch], or a float32 [batch, *shape] tensor
    out: float32 [batch, *sample_shape]   the model output (meaning: manifest `prediction_type`)

The timestep is float32 at the boundary (int64 breaks TensorRT and several ORT hosts);
any cast to an index happens inside the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ddpm_rt.conditioning import CondInput
from ddpm_rt.errors import BundleError

if TYPE_CHECKING:
    from ddpm_rt.spec import DiffusionSpec

MIN_OPSET = 17
# element type names as ONNX Runtime reports them -> the contract's dtype names
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bfloat16)": "bfloat16"}
# A graph tensor as any runtime describes it: (dtype name, shape with ints for fixed dims
# and anything else -- a name, None, -1 -- for dynamic ones).
TensorIO = tuple[str, list[Any]]


@dataclass(frozen=True)
class GraphContract:
    """Names, dtypes, the dynamic axis and the batch range of the exported denoiser graph."""

    x_name: str = "x"
    t_name: str = "t"
    out_name: str = "out"
    dtype: str = "float32"  # boundary dtype of all three tensors, whatever the graph's precision
    batch_axis: str = "batch"  # name of the dynamic axis 0
    opset: int = MIN_OPSET
    min_batch: int = 1
    opt_batch: int = 4  # also the larger batch the exporter verifies at
    max_batch: int = 64  # TensorRT optimisation profile upper bound (engines may override)
    conditioning: tuple[CondInput, ...] = ()  # inputs after x and t (none for an unconditional model)

    def for_spec(self, spec: DiffusionSpec) -> GraphContract:
        """This contract with the conditioning inputs `spec` declares."""
        return self.for_conditioning(spec.conditioning)

    def for_conditioning(self, conditioning: tuple[CondInput, ...]) -> GraphContract:
        return replace(self, conditioning=tuple(conditioning))

    @property
    def input_names(self) -> tuple[str, ...]:
        return (self.x_name, self.t_name, *(c.name for c in self.conditioning))

    def dtypes(self) -> dict[str, str]:
        """Boundary dtype of every input and output."""
        return {self.x_name: self.dtype, self.t_name: self.dtype, self.out_name: self.dtype,
                **{c.name: c.dtype for c in self.conditioning}}

    @property
    def output_names(self) -> tuple[str]:
        return (self.out_name,)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: {0: self.batch_axis} for name in (*self.input_names, self.out_name)}

    def shapes(self, sample_shape: tuple[int, ...], batch: int) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of x, t and out for one batch size."""
        return {
            self.x_name: (batch, *sample_shape),
            self.t_name: (batch,),
            self.out_name: (batch, *sample_shape),
            **{c.name: (batch, *c.shape) for c in self.conditioning},
        }

    def symbolic_shapes(self, sample_shape: tuple[int, ...]) -> dict[str, list[int | str]]:
        """Shapes as stored in the graph: the batch axis by name, the rest fixed."""
        return {
            self.x_name: [self.batch_axis, *sample_shape],
            self.t_name: [self.batch_axis],
            self.out_name: [self.batch_axis, *sample_shape],
            **{c.name: [self.batch_axis, *c.shape] for c in self.conditioning},
        }

    def to_dict(self, sample_shape: tuple[int, ...]) -> dict[str, Any]:
        """The manifest's `io` section."""
        shapes, dtypes = self.symbolic_shapes(sample_shape), self.dtypes()
        return {
            "inputs": [{"name": n, "dtype": dtypes[n], "shape": shapes[n]} for n in self.input_names],
            "outputs": [{"name": self.out_name, "dtype": self.dtype, "shape": shapes[self.out_name]}],
            "dynamic_axes": {self.batch_axis: 0},
            "batch_range": [self.min_batch, self.opt_batch, self.max_batch],
        }


CONTRACT = GraphContract()


def _fixed(d: Any) -> int | None:
    return d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None


def check_io(inputs: dict[str, TensorIO], outputs: dict[str, TensorIO], sample_shape: tuple[int, ...],
             where: str, contract: GraphContract = CONTRACT) -> int | None:
    """Check a graph's I/O against the contract; return its fixed batch (None = dynamic, as it should be).

    Runtime-agnostic: ONNX Runtime, OpenVINO and the exporter describe their graphs as
    {name: (dtype, shape)} and all share this one check. Each failure names the fix.
    """
    want_in, want_out = set(contract.input_names), list(contract.output_names)
    if set(inputs) != want_in or list(outputs) != want_out:
        raise BundleError(
            f"{where}: the graph has inputs {sorted(inputs)} and outputs {list(outputs)}; the ddpm-rt "
            f"contract is inputs {sorted(want_in)} and output {want_out} (re-export it with `ddpm-rt export`)"
        )
    shapes, dtypes = contract.symbolic_shapes(sample_shape), contract.dtypes()
    batches: set[int | None] = set()
    for name, (dtype, shape) in {**inputs, **outputs}.items():
        if dtype != dtypes[name]:
            raise BundleError(f"{where}: graph tensor {name!r} is {dtype}, the contract says {dtypes[name]}")
        want = shapes[name]
        if len(shape) != len(want) or [_fixed(d) for d in shape[1:]] != list(want[1:]):
            raise BundleError(
                f"{where}: graph tensor {name!r} has shape {list(shape)} but the manifest's sample shape "
                f"{list(sample_shape)} needs {want}; the manifest and graph are inconsistent, re-export"
            )
        batches.add(_fixed(shape[0]))
    if len(batches) != 1:
        raise BundleError(f"{where}: the graph's inputs and output disagree on the batch dimension; re-export the bundle")
    return batches.pop()
