"""Evaluation metrics: FID against closed forms, KID, improved precision/recall, memorization,
class statistics and the matched-N FID protocol.  All on small synthetic feature sets."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.eval import (
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
from genlab.report.images import auto_scale


def _random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def _trace_sqrt_eigvals(s1, s2):
    """Tr((S1 S2)^{1/2}) written differently from the module: the eigenvalues of the non-symmetric
    product S1 S2 (real and >= 0 for PSD matrices, up to rounding)."""
    lam = np.linalg.eigvals(s1 @ s2)
    return np.sqrt(np.clip(lam.real, 0, None)).sum()


# --------------------------------------------------------------------------------------------- FID

def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16)) * 3 + 5
    mu, s = feature_stats(x)
    scale = np.trace(s) + mu @ mu
    assert fid(x, x) <= 1e-6 * scale
    assert fid(torch.from_numpy(x).float(), x) <= 1e-5 * scale  # torch input accepted


def test_feature_stats_unbiased_float64():
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    mu, s = feature_stats(torch.from_numpy(x))
    assert mu.dtype == np.float64 and s.dtype == np.float64
    np.testing.assert_allclose(s, np.cov(x.astype(np.float64), rowvar=False, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)


def test_fid_diagonal_closed_form():
    rng = np.random.default_rng(2)
    d = 10
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 4, size=d), rng.uniform(0.1, 4, size=d)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # one-dimensional scalars
    assert frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1 + 1)


def test_fid_non_diagonal_against_independent_computations():
    rng = np.random.default_rng(3)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    brute = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_eigvals(s1, s2)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(brute, rel=1e-8)
    try:
        from scipy.linalg import sqrtm
    except ImportError:
        return
    covmean = sqrtm(s1 @ s2)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    assert got == pytest.approx(ref, rel=1e-8)


def test_fid_symmetric_and_from_stats():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 8))
    b = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + 1
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-9)
    assert fid_from_stats(feature_stats(a), feature_stats(b)) == pytest.approx(fid(a, b), rel=1e-12)


def test_fid_singular_covariance_is_finite_and_real():
    rng = np.random.default_rng(5)
    d = 64
    a = rng.normal(size=(20, d))  # 20 samples in 64 dims: rank-19 covariances
    b = rng.normal(size=(30, d)) + 0.5
    v = fid(a, b)
    assert isinstance(v, float) and math.isfinite(v) and v > 0
    assert fid(a, a) <= 1e-8 * (np.trace(feature_stats(a)[1]) + 1)
    # low-rank covariances given directly: still checked against the eigenvalue computation
    s1, s2 = _random_spd(rng, 16, rank=3), _random_spd(rng, 16, rank=5)
    m = np.zeros(16)
    expected = np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_eigvals(s1, s2)
    assert frechet_distance(m, s1, m, s2) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert frechet_distance(m, np.zeros((16, 16)), m, np.zeros((16, 16))) == 0.0


def test_fid_rejects_bad_input():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        fid(np.full((5, 2), np.nan), np.zeros((5, 2)))


# --------------------------------------------------------------------------------------------- KID

def test_kid_same_distribution_near_zero_shifted_positive_and_deterministic():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    c = rng.normal(size=(400, 16)) + 0.5
    mean, std = kid(a, b, subsets=20, subset_size=200, seed=0)
    assert std > 0 and abs(mean) < 3 * std
    mean_c, std_c = kid(a, c, subsets=20, subset_size=200, seed=0)
    assert mean_c > 10 * abs(mean) and mean_c > 5 * std_c
    assert kid(a, c, subsets=5, subset_size=100, seed=0) == kid(torch.from_numpy(a), c, subsets=5, subset_size=100)
    assert kid(a, c, subsets=5, subset_size=100, seed=0) != kid(a, c, subsets=5, subset_size=100, seed=1)


def test_kid_matches_explicit_unbiased_formula():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.3
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kid(x, y, subsets=3, subset_size=100)  # subset size clipped to 6: the whole sets
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std == pytest.approx(0, abs=1e-12)


# ------------------------------------------------------------------------------- precision / recall

def test_precision_recall_identical_far_and_half_modes():
    rng = np.random.default_rng(8)
    c = np.array([[-10.0, 0.0], [10.0, 0.0]])
    real = np.concatenate([rng.normal(size=(200, 2)) + c[0], rng.normal(size=(200, 2)) + c[1]])
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    half = rng.normal(size=(300, 2)) + c[0]  # covers only the first mode
    p, r = precision_recall(real, half, k=3)
    assert p > 0.9
    assert 0.4 < r <= 0.55


def test_precision_recall_chunked_equals_unchunked(monkeypatch):
    import genlab.eval.metrics as m

    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(120, 5)), rng.normal(size=(90, 5)) + 0.3
    whole = precision_recall(real, fake, k=5)
    monkeypatch.setattr(m, "_CHUNK_ELEMS", 2000)  # blocks of ~16 rows
    assert precision_recall(real, fake, k=5) == whole


# ------------------------------------------------------------------------------------ memorization

def test_memorization_counts_copies_and_writes_pairs_picture(tmp_path):
    rng = np.random.default_rng(10)
    train = rng.integers(0, 17, size=(50, 1, 8, 8), dtype=np.uint8)
    samples = rng.integers(0, 17, size=(20, 1, 8, 8), dtype=np.uint8)
    samples[3] = train[7]
    samples[11] = train[0]
    feats_t = rng.normal(size=(50, 6))
    feats_s = rng.normal(size=(20, 6))
    out = memorization(torch.from_numpy(samples), train, feats_samples=feats_s, feats_train=feats_t, k_closest=5)
    assert out["exact_duplicates"] == 2 and out["exact_duplicate_fraction"] == pytest.approx(2 / 20)
    assert sorted(out["duplicate_indices"]) == [(3, 7), (11, 0)]
    pairs = out["closest_pairs"]
    assert len(pairs) == 5 and {tuple(p[:2]) for p in pairs[:2]} == {(3, 7), (11, 0)}
    assert pairs[0][2] == 0.0 and pairs[1][2] == 0.0 and pairs[2][2] > 0
    assert [p[2] for p in pairs] == sorted(p[2] for p in pairs)
    # nearest distances, independently
    d = np.sqrt(((samples.reshape(20, 1, -1).astype(float) - train.reshape(1, 50, -1)) ** 2).sum(-1)).min(1)
    assert out["pixel_nn_mean"] == pytest.approx(d.mean()) and out["pixel_nn_median"] == pytest.approx(np.median(d))
    fd = np.sqrt(((feats_s[:, None] - feats_t[None]) ** 2).sum(-1)).min(1)
    assert out["feature_nn_mean"] == pytest.approx(fd.mean()) and out["feature_nn_median"] == pytest.approx(np.median(fd))
    assert "feature_nn_mean" not in memorization(samples, train)

    path = save_closest_pairs(samples, train, pairs, tmp_path / "pairs" / "closest.png", levels=17)
    s = auto_scale(8)
    img = Image.open(path)
    assert img.size == ((5 * (8 + 1) + 1) * s, (2 * (8 + 1) + 1) * s)
    # float images in [-1, 1] work as well, and the picture shows the pairs
    fl = torch.from_numpy(samples).float() / 8 - 1
    ft = torch.from_numpy(train).float() / 8 - 1
    p2 = save_closest_pairs(fl, ft, out, tmp_path / "closest2.png")
    assert np.array_equal(np.asarray(Image.open(p2)), np.asarray(img))


def test_memorization_rejects_non_integer_images():
    with pytest.raises(ValueError):
        memorization(np.full((2, 1, 2, 2), 0.5), np.zeros((3, 1, 2, 2)))


# ------------------------------------------------------------------------------- class statistics

def test_class_stats_and_conditional_accuracy():
    k = 10
    uniform = np.eye(k)[np.repeat(np.arange(k), 3)]  # every class predicted 3 times, one-hot
    st = class_stats(uniform)
    assert st["entropy"] == pytest.approx(math.log(k)) and st["histogram"] == [3] * k
    assert st["confidence"] == pytest.approx(1.0)
    single = np.tile(np.array([0.1, 0.7, 0.2]), (8, 1))
    st = class_stats(torch.from_numpy(single))
    assert st["entropy"] == 0.0 and st["histogram"] == [0, 8, 0] and st["confidence"] == pytest.approx(0.7)

    labels = np.repeat(np.arange(k), 3)
    assert conditional_accuracy(uniform, labels) == 1.0
    labels[:6] = 9  # the first 6 (classes 0 and 1) were asked for 9
    assert conditional_accuracy(uniform, torch.from_numpy(labels)) == pytest.approx(24 / 30)


# ----------------------------------------------------------------------------------- matched-N FID

def test_matched_n_fid_same_distribution_ratio_near_one():
    rng = np.random.default_rng(11)
    d = 64
    scale = np.linspace(0.5, 2.0, d)

    def draw(n):
        return rng.normal(size=(n, d)) * scale + 1.0

    train, test, fake = draw(3000), draw(300), draw(2000)
    out = matched_n_fid(train, test, fake, subsets=10, seed=0)
    assert set(out) >= {"fake_subset_mean", "fake_subset_std", "floor", "ratio"}
    assert out["n"] == 300 and out["floor"] > 0 and out["fake_subset_std"] > 0
    assert 0.8 < out["ratio"] < 1.25
    assert matched_n_fid(train, test, fake, subsets=10, seed=0) == out
    # fakes from a shifted distribution are clearly worse than the floor
    assert matched_n_fid(train, test, fake + 0.5, subsets=5)["ratio"] > 2
    with pytest.raises(ValueError):
        matched_n_fid(train, test, fake[:100])  # fewer fakes than n
