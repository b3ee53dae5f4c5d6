"""What makes two scores comparable: per-sample seeds, the split across ranks, the key.

A protocol is (sampler and its settings, n, seed, feature network, metric). Sample i of a
protocol is drawn from its own generator, seeded by :func:`sample_seed` (seed, i), and the n
samples are cut into batches of ``batch_size``; rank r draws the r-th contiguous run of
batches, so gathering the ranks in rank order gives the samples in sample order. A sample
depends on (seed, i) only: the same n samples come out of one process or of eight DDP ranks,
and every caller (FID callback, NFE table, sample.py, benchmarks) draws the same samples for
the same protocol.
"""

from __future__ import annotations

import hashlib
import math

import torch

__all__ = [
    "batch_indices",
    "dist_info",
    "floor_key",
    "protocol_key",
    "rank_batches",
    "sample_generators",
    "sample_seed",
    "sampler_key",
]


def sample_seed(seed: int, index: int, stream: str = "sample") -> int:
    """The 63-bit seed of sample ``index`` under ``seed`` (sha256: the same in every process).

    ``stream`` names independent draws for the same sample (the sampling noise by default;
    e.g. the likelihood's dequantisation and Hutchinson probes use their own streams)."""
    digest = hashlib.sha256(f"difflab.{stream}:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def sample_generators(seed: int, indices: range | list[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample index. CPU generators by default, so the initial noise is
    the same on every device."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, i)) for i in indices]


def batch_indices(n: int, batch_size: int, b: int) -> range:
    """The sample indices of batch ``b`` of n samples cut into batches of ``batch_size``."""
    return range(b * batch_size, min(n, (b + 1) * batch_size))


def rank_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The batches rank ``rank`` of ``world_size`` draws: its contiguous share of the batches
    (equal shares, the first ``batches % world_size`` ranks one more), in order."""
    if int(n) != n or n < 0 or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"n must be an integer >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    base, rem = divmod(math.ceil(n / batch_size), world_size)
    start = rank * base + min(rank, rem)
    return list(range(start, start + base + (1 if rank < rem else 0)))


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the default torch.distributed group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def sampler_key(sampler, num_train_timesteps: int) -> str:
    """The sampler part of a key: ``sampler.key_part(T)`` (e.g. ``ddim50_eta1``, ``ddpm1000``)."""
    return sampler.key_part(int(num_train_timesteps))


def protocol_key(metric: str, feature: str, sampler_part: str, n: int, guidance: str | None = None) -> str:
    """The log key of a score, e.g. ``fid/digits/ddim50_eta1/n1000``.

    ``sampler_part`` is :func:`sampler_key`; ``guidance`` (e.g. ``cfg2_uniform``) is appended to
    it when a conditional model is sampled with guidance. Scores under different keys are not
    comparable.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    part = sampler_part if not guidance else f"{sampler_part}_{guidance}"
    return f"{metric}/{feature}/{part}/n{int(n)}"


def floor_key(metric: str, feature: str, n: int) -> str:
    """The key of the data floor at n, e.g. ``fid_floor/digits/n1000``: two disjoint sets of
    real images scored against each other, the best any sampler can reach at that n."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    return f"{metric}_floor/{feature}/n{int(n)}"
