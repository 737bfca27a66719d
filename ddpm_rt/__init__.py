"""ddpm-rt: fast, portable samplers for trained diffusion denoisers.

Importing this package is cheap: torch, onnxruntime and tensorrt are imported
only by the modules that need them.
"""

from ddpm_rt.errors import DdpmRtError
from ddpm_rt.plan import SamplerSpec, SamplingPlan, build_plan
from ddpm_rt.runtime.loop import sample_loop
from ddpm_rt.schedule import ScheduleSpec

__all__ = [
    "DdpmRtError",
    "SamplerSpec",
    "SamplingPlan",
    "ScheduleSpec",
    "build_plan",
    "sample_loop",
]
__version__ = "0.1.0"
