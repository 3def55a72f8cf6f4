"""Evaluation metrics on feature arrays: FID, KID, improved precision/recall, memorization checks,
class statistics and the matched-N FID comparison.

All functions are pure: they take torch tensors or numpy arrays (``N x D`` features, ``N x K``
classifier probabilities or ``N x C x H x W`` integer pixel levels), compute in numpy float64 (or
torch float64 for the pairwise distances) and return Python floats, tuples and dicts.  No scipy is
needed; the matrix square root of FID is taken through symmetric eigendecompositions.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = [
    "feature_stats", "frechet_distance", "fid", "fid_from_stats", "kid", "precision_recall",
    "memorization", "save_closest_pairs", "class_stats", "conditional_accuracy", "matched_n_fid",
]

# pairwise-distance blocks hold at most this many float64 entries (2**23 entries = 64 MiB)
_CHUNK_ELEMS = 2 ** 23


# ---------------------------------------------------------------------------------------------------
# helpers

def _np64(x, name: str = "array") -> np.ndarray:
    """A torch tensor or array-like -> numpy float64 (a copy only when needed)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _feats(x, name: str) -> np.ndarray:
    a = _np64(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected an N x D feature array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: features contain NaN or inf")
    return a


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix: eigh of the
    symmetrized matrix, eigenvalues clipped at 0."""
    s = (s + s.T) / 2
    w, v = np.linalg.eigh(s)
    w = np.sqrt(np.clip(w, 0.0, None))
    return (v * w) @ v.T


def _chunk_rows(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, n_cols))


def _torch64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


def _nearest(query: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``query``: L2 distance to, and index of, its nearest row of ``ref``
    (torch.cdist in float64, in row chunks so memory stays bounded)."""
    q, r = _torch64(query), _torch64(ref)
    dist = np.empty(len(q), dtype=np.float64)
    idx = np.empty(len(q), dtype=np.int64)
    step = _chunk_rows(len(r))
    for s in range(0, len(q), step):
        d = torch.cdist(q[s:s + step], r)
        m = d.min(dim=1)
        dist[s:s + step] = m.values.numpy()
        idx[s:s + step] = m.indices.numpy()
    return dist, idx


# ---------------------------------------------------------------------------------------------------
# FID

def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``ddof=1``, rows are samples) of ``N x D`` features, float64."""
    a = _feats(features, "features")
    if len(a) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {len(a)}")
    mu = a.mean(axis=0)
    sigma = np.atleast_2d(np.cov(a, rowvar=False))
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID; Heusel et al. 2017):

        ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}).

    The trace of the matrix square root is computed in float64 through the symmetric form
    ``Tr((S1 S2)^{1/2}) = Tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = sum_i sqrt(lambda_i)`` where ``S1^{1/2}``
    comes from a symmetric eigendecomposition of S1 and ``lambda_i`` are the eigenvalues (``eigvalsh``)
    of the symmetric PSD matrix ``S1^{1/2} S2 S1^{1/2}``; negative eigenvalues from rounding are
    clipped to 0 in both steps.  (S1 S2 is similar to that matrix, so both have the same spectrum.)
    This never produces complex numbers, unlike ``scipy.linalg.sqrtm(S1 @ S2)``, and is well defined
    for singular covariances (fewer samples than dimensions).  The result is clipped at 0.
    """
    mu1, mu2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {s2.shape}")
    for name, v in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or inf")
    r1 = _psd_sqrt(s1)
    m = r1 @ ((s2 + s2.T) / 2) @ r1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(lam, 0.0, None)).sum())
    diff = mu1 - mu2
    val = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_covmean
    return max(val, 0.0)


def fid_from_stats(stats_a, stats_b) -> float:
    """FID from two ``(mu, sigma)`` pairs (as returned by :func:`feature_stats`)."""
    (mu1, s1), (mu2, s2) = stats_a, stats_b
    return frechet_distance(mu1, s1, mu2, s2)


def fid(feats_a, feats_b) -> float:
    """FID between two ``N x D`` feature sets."""
    return fid_from_stats(feature_stats(feats_a), feature_stats(feats_b))


# ---------------------------------------------------------------------------------------------------
# KID

def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    m, n = len(x), len(y)
    z = np.concatenate([x, y])
    kz = (gamma * (z @ z.T) + coef0) ** degree  # one product for K_xx, K_yy and K_xy
    kxx, kyy, kxy = kz[:m, :m], kz[m:, m:], kz[:m, m:]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: Optional[float] = None, coef0: float = 1, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased
    estimator of MMD^2 (their eq. 4, i.e. diagonal kernel terms left out of the within-set sums)
    with the polynomial kernel ``k(x, y) = (gamma x.y + coef0)^degree``, ``gamma = 1/D`` by default,
    averaged over ``subsets`` random subsets of ``min(subset_size, len(a), len(b))`` rows drawn
    without replacement from each set (``numpy.random.default_rng(seed)``, so deterministic).

    Returns ``(mean, std)`` over the subsets (population std, ``ddof=0``, as in the usual
    implementations).  The unbiased estimate can be slightly negative for equal distributions.
    Note: when ``subset_size`` covers both sets completely every subset is the same and std is 0.
    """
    a, b = _feats(feats_a, "feats_a"), _feats(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got {m}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    g = 1.0 / a.shape[1] if gamma is None else float(gamma)
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        vals[i] = _mmd2_unbiased(x, y, degree, g, coef0)
    return float(vals.mean()), float(vals.std())


# ---------------------------------------------------------------------------------------------------
# improved precision / recall

def _kth_nn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every row to its k-th nearest other row (the row itself, at distance 0, is skipped)."""
    radii = torch.empty(len(x), dtype=torch.float64)
    step = _chunk_rows(len(x))
    for s in range(0, len(x), step):
        d = torch.cdist(x[s:s + step], x)
        radii[s:s + step] = d.kthvalue(k + 1, dim=1).values
    return radii


def _inside(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor) -> np.ndarray:
    """For every query row: is it within radius_j of some reference row j?"""
    out = np.empty(len(query), dtype=bool)
    step = _chunk_rows(len(ref))
    for s in range(0, len(query), step):
        d = torch.cdist(query[s:s + step], ref)
        out[s:s + step] = (d <= radii[None, :]).any(dim=1).numpy()
    return out


def precision_recall(real_feats, fake_feats, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its samples with radius the distance to the
    sample's k-th nearest neighbour within the same set.  Precision is the fraction of fake samples
    inside the real manifold, recall the fraction of real samples inside the fake manifold.
    Distances are Euclidean (torch.cdist, float64, in row chunks).
    """
    real, fake = _feats(real_feats, "real_feats"), _feats(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1 or k >= min(len(real), len(fake)):
        raise ValueError(f"k must be in 1..{min(len(real), len(fake)) - 1}, got {k}")
    r, f = _torch64(real), _torch64(fake)
    precision = _inside(f, r, _kth_nn_radii(r, k)).mean()
    recall = _inside(r, f, _kth_nn_radii(f, k)).mean()
    return float(precision), float(recall)


# ---------------------------------------------------------------------------------------------------
# memorization

def _levels_flat(x, name: str) -> np.ndarray:
    """Integer pixel levels ``N x C x H x W`` (or any ``N x ...``) -> int64 ``N x P``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim < 2:
        raise ValueError(f"{name}: expected N x C x H x W integer levels, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype, np.bool_):
        if not (np.all(np.isfinite(a)) and np.array_equal(a, np.round(a))):
            raise ValueError(f"{name}: expected integer pixel levels, got non-integer values ({a.dtype})")
    return np.ascontiguousarray(a.reshape(len(a), -1).astype(np.int64))


def memorization(samples, train, *, feats_samples=None, feats_train=None, k_closest: int = 8) -> dict:
    """How close generated samples are to the training set.

    ``samples`` and ``train`` are integer pixel levels ``N x C x H x W``.  Returns a dict with

    * ``exact_duplicates``: number of samples identical (as integer arrays) to some training image,
      ``exact_duplicate_fraction`` that number over ``len(samples)``, ``duplicate_indices``
      ``[(sample_idx, train_idx), ...]`` (one matching training index per duplicate sample);
    * ``pixel_nn_mean`` / ``pixel_nn_median``: mean / median over samples of the L2 distance (levels
      cast to float64) to the nearest training image;
    * ``feature_nn_mean`` / ``feature_nn_median``: the same in feature space, only when both
      ``feats_samples`` and ``feats_train`` are given;
    * ``closest_pairs``: ``[(sample_idx, train_idx, distance), ...]``, the ``k_closest`` samples
      nearest to the training set in pixel space, each with its nearest training image, closest first.
    """
    s, t = _levels_flat(samples, "samples"), _levels_flat(train, "train")
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"image sizes differ: {np.shape(samples)[1:]} vs {np.shape(train)[1:]}")
    lookup = {}
    for j in range(len(t)):
        lookup.setdefault(t[j].tobytes(), j)
    dups = [(i, lookup[s[i].tobytes()]) for i in range(len(s)) if s[i].tobytes() in lookup]

    dist, idx = _nearest(s.astype(np.float64), t.astype(np.float64))
    order = np.argsort(dist, kind="stable")[:max(0, int(k_closest))]
    out = {
        "n_samples": int(len(s)),
        "n_train": int(len(t)),
        "exact_duplicates": len(dups),
        "exact_duplicate_fraction": len(dups) / len(s) if len(s) else 0.0,
        "duplicate_indices": dups,
        "pixel_nn_mean": float(dist.mean()),
        "pixel_nn_median": float(np.median(dist)),
        "closest_pairs": [(int(i), int(idx[i]), float(dist[i])) for i in order],
    }
    if (feats_samples is None) != (feats_train is None):
        raise ValueError("give both feats_samples and feats_train, or neither")
    if feats_samples is not None:
        fs, ft = _feats(feats_samples, "feats_samples"), _feats(feats_train, "feats_train")
        if len(fs) != len(s) or len(ft) != len(t):
            raise ValueError("feature arrays must have one row per sample / training image")
        fdist, _ = _nearest(fs, ft)
        out["feature_nn_mean"] = float(fdist.mean())
        out["feature_nn_median"] = float(np.median(fdist))
    return out


def _images_model(x, levels: Optional[int]) -> torch.Tensor:
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if levels is not None:
        from genlab.data.base import to_model
        return to_model(x, levels)
    if not torch.is_floating_point(x):
        raise ValueError("integer images need `levels` to be mapped to [-1, 1]")
    return x.to(torch.float32)


def save_closest_pairs(samples_img, train_img, pairs, path, *, levels: Optional[int] = None) -> Path:
    """Write a PNG with two rows: the samples of ``pairs`` on top, their nearest training images under
    them.  ``pairs`` is ``memorization(...)["closest_pairs"]`` (or the whole dict).  Images are float
    ``N x C x H x W`` in [-1, 1], or integer levels when ``levels`` is given."""
    if isinstance(pairs, dict):
        pairs = pairs["closest_pairs"]
    if len(pairs) == 0:
        raise ValueError("no pairs to draw")
    from genlab.pictures import auto_scale, grid

    si = torch.as_tensor([int(p[0]) for p in pairs])
    ti = torch.as_tensor([int(p[1]) for p in pairs])
    top = _images_model(samples_img, levels)[si]
    bottom = _images_model(train_img, levels)[ti]
    x = torch.cat([top, bottom])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(x, nrow=len(pairs), pad=1, scale=auto_scale(x.shape[-1])).save(path)
    return path


# ---------------------------------------------------------------------------------------------------
# classifier-based statistics

def _probs(probs) -> np.ndarray:
    p = _np64(probs, "probs")
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"expected N x K class probabilities, got shape {p.shape}")
    return p


def class_stats(probs) -> dict:
    """Statistics of classifier probabilities ``N x K`` over generated samples.

    ``entropy``: natural-log entropy of the histogram of predicted classes (argmax), at most
    ``log K`` (``max_entropy``) when every class is predicted equally often, 0 when one class only;
    ``histogram``: counts per class (list of K ints); ``confidence``: mean of the max probability.
    """
    p = _probs(probs)
    n, k = p.shape
    hist = np.bincount(p.argmax(axis=1), minlength=k) if n else np.zeros(k, dtype=np.int64)
    freq = hist / max(n, 1)
    nz = freq[freq > 0]
    entropy = float(-(nz * np.log(nz)).sum()) if n else 0.0
    return {
        "entropy": max(entropy, 0.0),
        "max_entropy": math.log(k),
        "histogram": [int(c) for c in hist],
        "confidence": float(p.max(axis=1).mean()) if n else float("nan"),
    }


def conditional_accuracy(probs, labels) -> float:
    """Fraction of samples whose predicted class (argmax of ``probs``) is the requested ``labels``."""
    p = _probs(probs)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    if len(p) == 0:
        raise ValueError("no samples")
    return float((p.argmax(axis=1) == y.astype(np.int64)).mean())


# ---------------------------------------------------------------------------------------------------
# matched-N FID (B1 protocol)

def matched_n_fid(real_train_feats, real_test_feats, fake_feats, n: Optional[int] = None,
                  subsets: int = 20, seed: int = 0) -> dict:
    """FID at matched sample size.  FID is biased upwards at small N, so generated samples are
    compared with the training statistics at the size of the held-out real set: the FID of
    ``subsets`` random ``n``-subsets of the fakes (without replacement,
    ``numpy.random.default_rng(seed)``; ``n`` defaults to ``len(real_test_feats)``) against the
    training-set statistics, next to the real-vs-real floor ``FID(real_test, real_train)``.

    Returns ``{"fake_subset_mean", "fake_subset_std", "floor", "ratio", "n", "subsets"}`` with
    ``ratio = fake_subset_mean / floor`` (about 1 when the fakes are as close to the training
    distribution as held-out real data; ``inf`` if the floor is 0) and std with ``ddof=0``.
    """
    train = _feats(real_train_feats, "real_train_feats")
    test = _feats(real_test_feats, "real_test_feats")
    fake = _feats(fake_feats, "fake_feats")
    n = len(test) if n is None else int(n)
    if n < 2 or n > len(fake):
        raise ValueError(f"n must be in 2..{len(fake)} (number of fakes), got {n}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    train_stats = feature_stats(train)
    floor = fid_from_stats(feature_stats(test), train_stats)
    rng = np.random.default_rng(seed)
    vals = np.array([fid_from_stats(feature_stats(fake[rng.choice(len(fake), n, replace=False)]), train_stats)
                     for _ in range(subsets)])
    mean = float(vals.mean())
    return {
        "fake_subset_mean": mean,
        "fake_subset_std": float(vals.std()),
        "floor": floor,
        "ratio": mean / floor if floor > 0 else float("inf"),
        "n": n,
        "subsets": int(subsets),
    }
