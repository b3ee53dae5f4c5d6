"""FID / KID for diffusion samples: feature networks, metrics, real-statistics cache.

Protocol: features are always taken from uint8 images (N, C, H, W) (``to_uint8`` output,
the bytes of a saved PNG); real statistics are computed over a fixed, declared n and cached
on disk under a key naming the data, split, feature network (and its weights), n, image
shape and seed; every score carries that protocol. See :mod:`difflab.metrics.evaluate`.
"""

from difflab.metrics.cache import REQUIRED_KEY_FIELDS, RealStats, RealStatsCache, key_hash
from difflab.metrics.evaluate import (
    METRICS,
    ArrayImages,
    RealImageSource,
    data_floor,
    floor_key,
    protocol_key,
    real_stats,
    score,
)
from difflab.metrics.features import (
    DIGITS_WEIGHTS,
    INCEPTION_URL,
    DigitFeatures,
    DigitNet,
    FeatureExtractor,
    FeatureWeightsNotFoundError,
    InceptionFeatures,
    available_feature_extractors,
    build_feature_extractor,
    inception_weights_cache_path,
)
from difflab.metrics.fid import FeatureStats, frechet_distance, kernel_inception_distance

__all__ = [
    "DIGITS_WEIGHTS",
    "INCEPTION_URL",
    "METRICS",
    "REQUIRED_KEY_FIELDS",
    "ArrayImages",
    "DigitFeatures",
    "DigitNet",
    "FeatureExtractor",
    "FeatureStats",
    "FeatureWeightsNotFoundError",
    "InceptionFeatures",
    "RealImageSource",
    "RealStats",
    "RealStatsCache",
    "available_feature_extractors",
    "build_feature_extractor",
    "data_floor",
    "floor_key",
    "frechet_distance",
    "inception_weights_cache_path",
    "kernel_inception_distance",
    "key_hash",
    "protocol_key",
    "real_stats",
    "score",
]
