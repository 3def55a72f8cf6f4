"""The shapes attribute classifier that scores text-conditional samples: it learns the generator's ground truth,
caches, refuses to load when below its accuracy floor, and its accuracy summary counts what it should."""
import numpy as np
import pytest
import torch

import genlab.eval.attributes as A
from genlab.data.shapes import make_shapes
from genlab.eval.features import FeatureError


def test_trains_caches_and_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(A, "TRAIN_IMAGES", 3000)
    monkeypatch.setattr(A, "TEST_IMAGES", 500)
    monkeypatch.setattr(A, "EPOCHS", 3)
    monkeypatch.setattr(A, "MIN_ACCURACY", 0.0)
    clf = A.load_attribute_classifier(16, cache_dir=tmp_path / "c", log=lambda m: None)
    acc = clf.info["test_accuracy"]
    assert acc["colour"] > 0.95 and acc["position"] > 0.95 and acc["size"] > 0.9   # easy attributes
    again = A.load_attribute_classifier(16, cache_dir=tmp_path / "c")            # from the cache
    x, attrs, _ = make_shapes(64, 16, seed=7)
    f1, p1 = clf.predict(x)
    f2, p2 = again.predict(x)
    assert f1.shape == (64, 128) and np.allclose(f1, f2) and all((p1[a] == p2[a]).all() for a in p1)
    wrong = dict(attrs, colour=(attrs["colour"] + 1) % 6)                        # every colour asked wrongly
    r = clf.accuracy(x, wrong)
    assert r["colour"] < 0.1 and r["all"] <= r["colour"]
    assert r["mean"] == pytest.approx(np.mean([r[a] for a in A.ATTRIBUTES]))
    monkeypatch.setattr(A, "MIN_ACCURACY", 0.999)
    clf.info["test_accuracy"]["shape"] = 0.5
    with pytest.raises(FeatureError, match="below 0.999 test accuracy on shape"):
        clf.check()
    with pytest.raises(ValueError, match="takes RGB images"):
        clf.predict(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
