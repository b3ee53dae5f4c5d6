"""The one evaluation path: draw n samples for a protocol, quantise, score, name the key.

Every score in difflab comes from here (the FID and NFE-table callbacks, sample.py, the
benchmarks): :func:`evaluate` draws the samples (per-sample seeds, split across DDP ranks),
:class:`Evaluator` scores them with torchmetrics against cached real statistics and takes the
data floor at the same n, and :func:`protocol_key` names the result. Pure torch: the ranks are
reached through ``torch.distributed``, never through Lightning.
"""

from difflab.evaluation.protocol import (
    batch_indices,
    dist_info,
    floor_key,
    protocol_key,
    rank_batches,
    sample_generators,
    sample_seed,
    sampler_key,
)
from difflab.evaluation.score import METRICS, EvalResult, Evaluator, check_metrics, draw, eval_mode, evaluate

__all__ = [
    "METRICS",
    "EvalResult",
    "Evaluator",
    "batch_indices",
    "check_metrics",
    "dist_info",
    "draw",
    "eval_mode",
    "evaluate",
    "floor_key",
    "protocol_key",
    "rank_batches",
    "sample_generators",
    "sample_seed",
    "sampler_key",
]
