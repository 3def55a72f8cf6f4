"""Tests for genlab.data.shapes: the generated captioned shapes dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genlab.data import DATASETS, SPLITS, ImageDataset, load_dataset
from genlab.data.shapes import (
    ATTRIBUTES, COLOURS, HELDOUT_COMBOS, POSITIONS, RGB, SHAPES, SIZES, SYNONYMS, TEMPLATES, VOCAB,
    allowed_combos, caption_for, make_shapes, parse_caption,
)


def pairs_of(attrs) -> set[tuple[str, str]]:
    return {(SHAPES[s], COLOURS[c]) for s, c in zip(attrs["shape"].tolist(), attrs["colour"].tolist())}


# ---------------------------------------------------------------- generator


def test_make_shapes_deterministic_types_and_levels():
    x, attrs, caps = make_shapes(64, image_size=16, seed=5)
    x2, attrs2, caps2 = make_shapes(64, image_size=16, seed=5)
    assert np.array_equal(x, x2) and caps == caps2
    assert all(np.array_equal(attrs[a], attrs2[a]) for a in ATTRIBUTES)
    assert not np.array_equal(x, make_shapes(64, image_size=16, seed=6)[0])
    assert x.shape == (64, 3, 16, 16) and x.dtype == np.uint8
    assert x.max() > 200 and x.min() < 60 and len(np.unique(x)) > 100  # uses the 256 levels
    assert set(attrs) == set(ATTRIBUTES) and len(caps) == 64 and all(isinstance(c, str) for c in caps)
    for a in ATTRIBUTES:
        assert attrs[a].dtype == np.int64 and attrs[a].shape == (64,)
        assert attrs[a].min() >= 0 and attrs[a].max() < len(VOCAB[a])
    # the same seed gives the same scenes (attributes, captions) at 32x32
    x32, attrs32, caps32 = make_shapes(64, image_size=32, seed=5)
    assert x32.shape == (64, 3, 32, 32) and caps32 == caps
    assert all(np.array_equal(attrs[a], attrs32[a]) for a in ATTRIBUTES)
    # combos restrict the (shape, colour) pairs
    _, a1, _ = make_shapes(40, seed=0, combos=[("cross", "cyan"), (0, 1)])
    assert pairs_of(a1) == {("cross", "cyan"), ("circle", "green")}
    assert make_shapes(0)[0].shape == (0, 3, 16, 16)
    with pytest.raises(ValueError, match="16 or 32"):
        make_shapes(4, image_size=28)
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        make_shapes(4, combos=[("circle", "purple")])


@pytest.mark.parametrize("size", [16, 32])
def test_pixels_show_the_stated_colour_position_and_size(size):
    """Shape pixels (saturated; backgrounds are near-gray) have the named colour, lie in the named
    region, and large shapes cover more pixels than small ones of the same kind."""
    x, attrs, _ = make_shapes(300, image_size=size, seed=11)
    palette = np.asarray([RGB[c] for c in COLOURS], dtype=np.float64)
    img = x.astype(np.float64)
    sat = img.max(axis=1) - img.min(axis=1)  # (n, S, S)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    area = np.zeros(len(x))
    for i in range(len(x)):
        shape_px = sat[i] > 100
        bg_px = sat[i] < 40
        assert shape_px.sum() >= 4
        # the background is near-gray everywhere: pixels in between are the shape's anti-aliased rim
        pad = np.pad(shape_px, 1)
        near = np.zeros_like(shape_px)
        for dy in range(3):
            for dx in range(3):
                near |= pad[dy:dy + size, dx:dx + size]
        assert (bg_px | near).all(), i
        mean = img[i][:, shape_px].mean(axis=1)
        dist = np.linalg.norm(palette - mean, axis=1)
        assert dist.argmin() == attrs["colour"][i] and dist.min() < 60, (i, mean)
        # the background is never close to the shape's colour
        assert np.linalg.norm(img[i][:, bg_px].mean(axis=1) - mean) > 100
        cx, cy = xs[shape_px].mean() / size, ys[shape_px].mean() / size
        pos = POSITIONS[attrs["position"][i]]
        if pos == "center":
            assert abs(cx - 0.5) < 0.08 and abs(cy - 0.5) < 0.08, (i, pos, cx, cy)
        else:
            assert (cy < 0.4) if "top" in pos else (cy > 0.6), (i, pos, cy)
            assert (cx < 0.4) if "left" in pos else (cx > 0.6), (i, pos, cx)
        area[i] = shape_px.mean()
    for k in range(len(SHAPES)):
        small = area[(attrs["shape"] == k) & (attrs["size"] == SIZES.index("small"))]
        large = area[(attrs["shape"] == k) & (attrs["size"] == SIZES.index("large"))]
        assert len(small) and len(large) and small.max() < large.min(), SHAPES[k]


# ---------------------------------------------------------------- captions


def test_captions_parse_back_to_attributes():
    ds = load_dataset("shapes", "test")
    assert len(set(ds.captions)) > 300  # templates and synonyms vary
    for i, text in enumerate(ds.captions):
        assert parse_caption(text) == {a: int(ds.attrs[a][i]) for a in ATTRIBUTES}, text
    # every synonym of every value, through every template
    rng = np.random.default_rng(0)
    for attr, values in SYNONYMS.items():
        for value, words in values.items():
            for word in words:
                for template in TEMPLATES:
                    fill = {a: SYNONYMS[a][VOCAB[a][0]][0] for a in ATTRIBUTES}
                    fill[attr] = word
                    want = {a: 0 for a in ATTRIBUTES}
                    want[attr] = VOCAB[attr].index(value)
                    assert parse_caption(template.format(**fill)) == want
    # caption_for accepts ids or names and names all four attributes
    text = caption_for({"shape": "triangle", "colour": 3, "size": "large", "position": "top right"}, rng)
    assert parse_caption(text) == {"shape": 2, "colour": 3, "size": 1, "position": 1}
    assert parse_caption("A Tiny CRIMSON disc at the upper-left corner.") == {
        "shape": 0, "colour": 0, "size": 0, "position": 0}


def test_parse_caption_errors():
    with pytest.raises(ValueError, match=r"unknown word 'purple' in caption .*; known words: .*circle"):
        parse_caption("a small purple circle in the top left")
    with pytest.raises(ValueError, match="unknown word 'top'"):
        parse_caption("a small red circle at the top")  # a position is a phrase, "top" alone is not
    with pytest.raises(ValueError, match="names no size"):
        parse_caption("a red circle in the middle")
    with pytest.raises(ValueError, match="two different colours"):
        parse_caption("a small red blue circle in the middle")
    with pytest.raises(ValueError, match="position' is missing"):
        caption_for({"shape": 0, "colour": 0, "size": 0}, 0)


# ---------------------------------------------------------------- splits


def test_splits_sizes_labels_and_options():
    assert "shapes" in DATASETS and "heldout" in SPLITS
    sizes = {s: len(load_dataset("shapes", s)) for s in ("train", "val", "train+val", "test", "heldout")}
    assert sizes == {"train": 5500, "val": 500, "train+val": 6000, "test": 1000, "heldout": 500}
    full, train, val = (load_dataset("shapes", s, seed=123) for s in ("train+val", "train", "val"))
    assert torch.equal(torch.cat([train.x, val.x]), full.x) and train.captions + val.captions == full.captions
    assert torch.equal(load_dataset("shapes", "train").x, train.x)  # fixed split: the seed does not matter
    assert full.shape == (3, 16, 16) and full.levels == 256 and full.name == "shapes"
    assert full.num_classes == 4 and full.class_names == list(SHAPES) and torch.equal(full.y, full.attrs["shape"])
    unlabeled = load_dataset("shapes", "val", labels=False)
    assert unlabeled.y is None and unlabeled.num_classes == 0 and unlabeled.captions == val.captions
    assert len(load_dataset("shapes", "val", val_size=100)) == 100
    test32 = load_dataset("shapes", "test", image_size=32, channels=3)
    test16 = load_dataset("shapes", "test")
    assert test32.shape == (3, 32, 32) and test32.captions == test16.captions
    assert load_dataset("shapes", "heldout", binarize=True).levels == 2
    with pytest.raises(ValueError, match="image_size must be 16 or 32"):
        load_dataset("shapes", "train", image_size=28)
    with pytest.raises(ValueError, match="channels must be 3"):
        load_dataset("shapes", "train", channels=1)
    with pytest.raises(ValueError, match="only for the shapes dataset"):
        load_dataset("digits", "heldout")
    # loaded copies do not alias the generator's cache
    full.x.zero_()
    assert load_dataset("shapes", "train+val").x.max() > 0


def test_heldout_combinations():
    assert len(HELDOUT_COMBOS) == 4
    assert sorted(s for s, _ in HELDOUT_COMBOS) == sorted(SHAPES)  # one per shape
    assert len({c for _, c in HELDOUT_COMBOS}) == 4  # each colour at most once
    held = set(HELDOUT_COMBOS)
    for split in ("train+val", "test"):
        seen = pairs_of(load_dataset("shapes", split).attrs)
        assert not seen & held and seen == set(allowed_combos()), split
    heldout = load_dataset("shapes", "heldout")
    assert pairs_of(heldout.attrs) == held
    assert {parse_caption(t)["size"] for t in heldout.captions} == {0, 1}


# ---------------------------------------------------------------- ImageDataset fields


def test_batch_returns_text_and_attrs():
    ds = load_dataset("shapes", "test")
    idx = torch.tensor([5, 0, 7])
    b = ds.batch(idx)
    assert set(b) == {"x", "y", "text", "attrs"}
    assert b["x"].shape == (3, 3, 16, 16) and b["x"].dtype == torch.float32
    assert -1 <= b["x"].min() and b["x"].max() <= 1
    assert b["text"] == [ds.captions[i] for i in (5, 0, 7)]
    assert set(b["attrs"]) == set(ATTRIBUTES)
    assert all(torch.equal(b["attrs"][a], ds.attrs[a][idx]) for a in ATTRIBUTES)
    assert torch.equal(b["y"], b["attrs"]["shape"])
    assert set(load_dataset("digits", "test").batch(idx)) == {"x", "y"}  # uncaptioned datasets unchanged
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="captions must be a list of 2 strings"):
        ImageDataset(x, None, 256, 0, captions=["one"])
    with pytest.raises(ValueError, match=r"attrs\['shape'\] must be int64 of shape \(2,\)"):
        ImageDataset(x, None, 256, 0, attrs={"shape": torch.zeros(2, dtype=torch.int32)})
