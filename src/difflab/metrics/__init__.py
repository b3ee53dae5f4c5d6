"""Feature networks for FID / KID and the on-disk cache of real-data statistics.

Protocol: features are always taken from uint8 images (N, C, H, W) (``to_uint8`` output,
the bytes of a saved PNG); real statistics are computed over a fixed, declared n and cached
on disk under a key naming the data, split, feature network (and its weights), n, image
shape and seed. Scoring (torchmetrics' FID and KID) is :mod:`difflab.evaluation`.
"""

from difflab.metrics.cache import REQUIRED_KEY_FIELDS, RealStats, RealStatsCache, key_hash
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

__all__ = [
    "DIGITS_WEIGHTS",
    "INCEPTION_URL",
    "REQUIRED_KEY_FIELDS",
    "DigitFeatures",
    "DigitNet",
    "FeatureExtractor",
    "FeatureWeightsNotFoundError",
    "InceptionFeatures",
    "RealStats",
    "RealStatsCache",
    "available_feature_extractors",
    "build_feature_extractor",
    "inception_weights_cache_path",
    "key_hash",
]
