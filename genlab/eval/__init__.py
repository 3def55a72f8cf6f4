"""Evaluation: metrics on feature arrays (FID, KID, precision/recall, memorization, class statistics)."""
from .metrics import (
    class_stats,
    conditional_accuracy,
    feature_stats,
    fid,
    fid_from_stats,
    frechet_distance,
    kid,
    matched_n_fid,
    memorization,
    precision_recall,
    save_closest_pairs,
)

__all__ = [
    "class_stats", "conditional_accuracy", "feature_stats", "fid", "fid_from_stats", "frechet_distance",
    "kid", "matched_n_fid", "memorization", "precision_recall", "save_closest_pairs",
]
