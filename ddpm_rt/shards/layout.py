"""Which samples go where: shards of `shard_size` samples, computed in fixed micro-batches.

Sample i always runs in micro-batch i // m at slot i % m (m = micro_batch), so its bytes do
not depend on the shard size or on which worker ran it, even for kernels whose results
depend on the batch size. A shard is a whole number of micro-batches; the last micro-batch
of the run is padded with samples i >= num (each from its own stream), which are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpm_rt.errors import ConfigError


@dataclass(frozen=True)
class ShardRange:
    index: int
    start: int  # first sample (inclusive)
    stop: int  # last sample (exclusive)

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ShardLayout:
    num: int  # samples wanted
    shard_size: int  # samples per shard file (the last one may be shorter)
    micro_batch: int  # samples per backend call

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ConfigError(f"--num must be >= 1, got {self.num}")
        if self.micro_batch < 1:
            raise ConfigError(f"--micro-batch must be >= 1, got {self.micro_batch}")
        if self.shard_size < 1 or self.shard_size % self.micro_batch:
            raise ConfigError(
                f"--shard-size must be a positive multiple of the micro-batch {self.micro_batch}, "
                f"got {self.shard_size}"
            )

    @property
    def count(self) -> int:
        return -(-self.num // self.shard_size)

    def shard(self, index: int) -> ShardRange:
        if not 0 <= index < self.count:
            raise ConfigError(f"shard {index} is outside 0..{self.count - 1}")
        start = index * self.shard_size
        return ShardRange(index, start, min(start + self.shard_size, self.num))

    def shards(self) -> list[ShardRange]:
        return [self.shard(k) for k in range(self.count)]


def shard_filename(index: int) -> str:
    return f"shard-{index:05d}.npy"
