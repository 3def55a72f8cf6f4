"""Captioned shapes: a generated dataset of small RGB images (16x16 or 32x32) for composition tests.

Each image holds one shape with four attributes (``ATTRIBUTES``), drawn on a gray background
(dark or light, with a faint gradient, tint and noise), with a caption from templates with
synonyms ("a tiny crimson disc at the upper left") that always names all four attributes.
:func:`parse_caption` maps a caption back to attribute ids.

Backgrounds stay near-gray (channel spread under about 40 levels) while every colour has a channel
spread of at least 150, so the colour of a shape is never close to its background.

Splits (fixed, independent of any run seed): "train+val" 6000 images (seed 1), "val" its last
``val_size`` (default 500), "train" the rest, "test" 1000 images (seed 2); none of them contains a
(shape, colour) pair of ``HELDOUT_COMBOS``, and "heldout" (500 images, seed 3) contains only those.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import torch

from .base import ImageDataset, binarize as binarize_levels, split_indices

# ------------------------------------------------------------------- vocabularies

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
ATTRIBUTES = ("shape", "colour", "size", "position")
VOCAB = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}

# RGB of each colour (before a small per-image jitter)
RGB = {
    "red": (230, 30, 30),
    "green": (30, 200, 45),
    "blue": (35, 65, 235),
    "yellow": (235, 220, 30),
    "magenta": (225, 35, 215),
    "cyan": (30, 210, 225),
}

# synonyms per attribute value; the first is the canonical name
SYNONYMS = {
    "shape": {
        "circle": ("circle", "disc", "disk"),
        "square": ("square", "box", "block"),
        "triangle": ("triangle", "wedge"),
        "cross": ("cross", "plus"),
    },
    "colour": {
        "red": ("red", "crimson", "scarlet"),
        "green": ("green", "emerald", "lime"),
        "blue": ("blue", "cobalt", "sapphire"),
        "yellow": ("yellow", "golden", "lemon"),
        "magenta": ("magenta", "fuchsia"),
        "cyan": ("cyan", "turquoise", "aqua"),
    },
    "size": {
        "small": ("small", "tiny", "little"),
        "large": ("large", "big", "huge"),
    },
    "position": {
        "top left": ("top left", "upper left", "top-left"),
        "top right": ("top right", "upper right", "top-right"),
        "bottom left": ("bottom left", "lower left", "bottom-left"),
        "bottom right": ("bottom right", "lower right", "bottom-right"),
        "center": ("center", "middle", "centre"),
    },
}

# every template names all four attributes
TEMPLATES = (
    "a {size} {colour} {shape} in the {position}",
    "{size} {colour} {shape} in the {position}",
    "a {size} {colour} {shape} at the {position}",
    "there is a {size} {colour} {shape} in the {position}",
    "the {shape} in the {position} is {size} and {colour}",
    "{position}: a {size} {colour} {shape}",
    "a {colour} {shape}, {size}, in the {position}",
)
# words that carry no attribute (articles, prepositions, template glue)
FILLER = frozenset(("a", "an", "the", "in", "at", "on", "is", "and", "there", "of", "corner",
                    "image", "picture", "shape", "coloured", "colored"))

# (shape, colour) pairs that never appear in train / val / test: one per shape, each colour once
HELDOUT_COMBOS = (("circle", "green"), ("square", "magenta"), ("triangle", "blue"), ("cross", "yellow"))

IMAGE_SIZES = (16, 32)
LEVELS = 256
NUM_TRAIN = 6000  # "train+val"
DEFAULT_VAL_SIZE = 500
NUM_TEST = 1000
NUM_HELDOUT = 500
SPLIT_SEEDS = {"train+val": 1, "test": 2, "heldout": 3}

# geometry, in units of the image side (so 16 and 32 pixel images show the same scene)
HALF_SIZE = {"small": 2.75 / 16, "large": 4.75 / 16}  # half extent: ~5.5 px and ~9.5 px across at 16x16
SIZE_JITTER = 0.25 / 16
CORNER_CENTRE = 0.27
POSITION_JITTER = 0.04
COLOUR_JITTER = 12
SUPERSAMPLE_PIXELS = 64  # anti-aliasing: coverage on a 64x64 sub-pixel grid (4x4 per pixel at 16x16)


# ------------------------------------------------------------------- captions

def _phrase_table() -> dict[tuple[str, ...], tuple[str, int]]:
    table = {}
    for attr, values in SYNONYMS.items():
        for value, words in values.items():
            for w in words:
                table[tuple(_tokens(w))] = (attr, VOCAB[attr].index(value))
    return table


def _tokens(text: str) -> list[str]:
    return re.sub(r"[,.;:!?\-]", " ", text.lower()).split()


def _attr_id(attr: str, value) -> int:
    vocab = VOCAB[attr]
    if isinstance(value, str):
        if value not in vocab:
            raise ValueError(f"unknown {attr} {value!r}; choose one of {', '.join(vocab)}")
        return vocab.index(value)
    i = int(value)
    if not 0 <= i < len(vocab):
        raise ValueError(f"{attr} id {i} out of range 0..{len(vocab) - 1}")
    return i


def caption_for(attrs: dict, rng: np.random.Generator | int | None = None) -> str:
    """A caption naming all four attributes, from a random template and random synonyms.

    ``attrs`` maps each of ``ATTRIBUTES`` to an id (int) or a name (str); ``rng`` a numpy Generator
    (or a seed).
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    words = {}
    for attr in ATTRIBUTES:
        if attr not in attrs:
            raise ValueError(f"caption_for needs all of {', '.join(ATTRIBUTES)}; {attr!r} is missing")
        synonyms = SYNONYMS[attr][VOCAB[attr][_attr_id(attr, attrs[attr])]]
        words[attr] = synonyms[int(rng.integers(len(synonyms)))]
    text = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(**words)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)  # "an emerald", "an aqua"


PHRASES = _phrase_table()
KNOWN_WORDS = tuple(sorted(set(FILLER) | {w for phrase in PHRASES for w in phrase}))


def parse_caption(text: str) -> dict[str, int]:
    """Attribute ids ``{"shape", "colour", "size", "position"}`` named by a caption (the inverse of
    :func:`caption_for` through the synonym table; case and punctuation are ignored).

    Raises ValueError for an unknown word, an attribute that is missing, or one named twice differently.
    """
    toks = _tokens(text)
    found: dict[str, int] = {}
    i = 0
    while i < len(toks):
        for n in (2, 1):  # longest phrase first ("top left" before a lone word)
            hit = PHRASES.get(tuple(toks[i:i + n])) if i + n <= len(toks) else None
            if hit is not None:
                attr, value = hit
                if found.get(attr, value) != value:
                    raise ValueError(f"caption {text!r} names two different {attr}s: "
                                     f"{VOCAB[attr][found[attr]]!r} and {VOCAB[attr][value]!r}")
                found[attr] = value
                i += n
                break
        else:
            if toks[i] not in FILLER:
                raise ValueError(f"unknown word {toks[i]!r} in caption {text!r}; known words: {', '.join(KNOWN_WORDS)}")
            i += 1
    missing = [a for a in ATTRIBUTES if a not in found]
    if missing:
        raise ValueError(f"caption {text!r} names no {' and no '.join(missing)}")
    return {a: found[a] for a in ATTRIBUTES}


# ------------------------------------------------------------------- drawing

def _combo_ids(combos) -> np.ndarray:
    pairs = [(_attr_id("shape", s), _attr_id("colour", c)) for s, c in combos]
    if not pairs:
        raise ValueError("combos must hold at least one (shape, colour) pair")
    return np.asarray(pairs, dtype=np.int64)


def _inside(shape: int, dx: np.ndarray, dy: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Sub-pixel mask of one shape kind centred at 0 with half extent ``h`` (y grows downward)."""
    if SHAPES[shape] == "circle":
        return dx * dx + dy * dy <= h * h
    if SHAPES[shape] == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * h
    if SHAPES[shape] == "triangle":
        # apex (0, -h), base corners (+-0.95h, h/2): centroid at the centre
        return (dy <= 0.5 * h) & (np.abs(dx) <= 0.95 * (dy + h) / 1.5)
    t = 0.35 * h  # cross: two bars of thickness 2t
    ax, ay = np.abs(dx), np.abs(dy)
    return ((ax <= t) & (ay <= h)) | ((ay <= t) & (ax <= h))


def _render(shape, cx, cy, h, rgb, bg, image_size):
    """Alpha-blend the anti-aliased shapes (coverage from a sub-pixel grid) over backgrounds."""
    ss = max(1, SUPERSAMPLE_PIXELS // image_size)
    m = image_size * ss
    u = (np.arange(m, dtype=np.float32) + 0.5) / m
    alpha = np.empty((len(shape), image_size, image_size), dtype=np.float32)
    for k in range(len(SHAPES)):
        sel = np.flatnonzero(shape == k)
        for s in range(0, len(sel), 256):
            rows = sel[s:s + 256]
            dx = u[None, None, :] - cx[rows, None, None]
            dy = u[None, :, None] - cy[rows, None, None]
            mask = _inside(k, dx, dy, h[rows, None, None])
            alpha[rows] = mask.reshape(len(rows), image_size, ss, image_size, ss).mean(axis=(2, 4))
    a = alpha[:, None]
    img = a * rgb[:, :, None, None] + (1 - a) * bg
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_shapes(n: int, image_size: int = 16, seed: int = 0, combos=None):
    """Generate ``n`` captioned shape images.

    Attributes are uniform: the (shape, colour) pair over ``combos`` (a sequence of pairs of names
    or ids; default all 24), size and position independently.  Attributes, captions, jitter and
    background levels depend only on ``seed`` (not on ``image_size``: the same seed gives the same
    scenes at 16 and 32); the pixel noise depends on both.

    Returns ``(x, attrs, captions)``: uint8 ``(n, 3, S, S)``, ``{attribute: int64 (n,)}`` and a list
    of ``n`` strings.
    """
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"the shapes dataset is drawn at 16x16 or 32x32; image_size must be 16 or 32, got {image_size!r}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    n = int(n)
    pairs = _combo_ids(combos if combos is not None else
                       [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))])
    rng = np.random.default_rng([seed, 0])     # attributes and scene geometry
    cap_rng = np.random.default_rng([seed, 1])  # caption templates and synonyms
    noise_rng = np.random.default_rng([seed, 2, image_size])  # pixel noise

    combo = pairs[rng.integers(len(pairs), size=n)]
    attrs = {
        "shape": combo[:, 0].copy(),
        "colour": combo[:, 1].copy(),
        "size": rng.integers(len(SIZES), size=n).astype(np.int64),
        "position": rng.integers(len(POSITIONS), size=n).astype(np.int64),
    }
    # geometry: half extent, centre (clamped so the shape stays inside the image)
    h = np.asarray([HALF_SIZE[s] for s in SIZES])[attrs["size"]] + rng.uniform(-SIZE_JITTER, SIZE_JITTER, n)
    centres = np.asarray([[CORNER_CENTRE, CORNER_CENTRE], [1 - CORNER_CENTRE, CORNER_CENTRE],
                          [CORNER_CENTRE, 1 - CORNER_CENTRE], [1 - CORNER_CENTRE, 1 - CORNER_CENTRE], [0.5, 0.5]])
    c = centres[attrs["position"]] + rng.uniform(-POSITION_JITTER, POSITION_JITTER, (n, 2))
    c = np.clip(c, h[:, None], 1 - h[:, None])
    rgb = np.asarray([RGB[name] for name in COLOURS], dtype=np.float32)[attrs["colour"]]
    rgb = np.clip(rgb + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 3)), 0, 255)
    # background: dark or light gray, a small tint, a faint linear gradient, low noise
    light = rng.random(n) < 0.5
    gray = np.where(light, rng.uniform(165, 235, n), rng.uniform(15, 85, n))
    tint = rng.uniform(-6, 6, (n, 3))
    theta = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0, 24, n)
    noise_std = rng.uniform(0, 3, n)

    s = image_size
    u = (np.arange(s, dtype=np.float32) + 0.5) / s - 0.5
    grad = (amp * np.cos(theta))[:, None, None] * u[None, None, :] + (amp * np.sin(theta))[:, None, None] * u[None, :, None]
    bg = (gray[:, None, None, None] + tint[:, :, None, None] + grad[:, None]
          + noise_std[:, None, None, None] * noise_rng.standard_normal((n, 3, s, s), dtype=np.float32))
    x = _render(attrs["shape"], c[:, 0].astype(np.float32), c[:, 1].astype(np.float32), h.astype(np.float32),
                rgb, bg.astype(np.float32), s)

    captions = [caption_for({a: int(attrs[a][i]) for a in ATTRIBUTES}, cap_rng) for i in range(n)]
    return x, attrs, captions


# ------------------------------------------------------------------- splits

def allowed_combos() -> list[tuple[str, str]]:
    """The (shape, colour) pairs of train / val / test: all except ``HELDOUT_COMBOS``."""
    return [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in HELDOUT_COMBOS]


@lru_cache(maxsize=8)
def _generated(part: str, image_size: int):
    size = {"train+val": NUM_TRAIN, "test": NUM_TEST, "heldout": NUM_HELDOUT}[part]
    combos = HELDOUT_COMBOS if part == "heldout" else allowed_combos()
    return make_shapes(size, image_size=image_size, seed=SPLIT_SEEDS[part], combos=combos)


def load_shapes_dataset(
    split: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    labels: bool = True,
    val_size: int | None = None,
    binarize: bool = False,
) -> ImageDataset:
    """Load a split of the captioned shapes (see the module docstring for the fixed splits).

    ``y`` is the shape class (``class_names == SHAPES``); ``captions`` and ``attrs`` always come along.
    """
    if image_size is None:
        image_size = 16
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"the shapes dataset is drawn at 16x16 or 32x32; image_size must be 16 or 32 (or unset), got {image_size!r}")
    if channels not in (None, 3):
        raise ValueError(f"the shapes dataset is RGB; channels must be 3 (or unset), got {channels!r}")

    if split in ("test", "heldout"):
        images, attrs, captions = _generated(split, image_size)
        idx = np.arange(len(images))
    else:
        images, attrs, captions = _generated("train+val", image_size)
        idx = split_indices(np.arange(len(images)), split, DEFAULT_VAL_SIZE if val_size is None else val_size)

    x = torch.from_numpy(images[idx])  # fancy indexing copies: the cache is never shared
    levels = LEVELS
    if binarize:
        x, levels = binarize_levels(x, levels), 2
    a = {k: torch.from_numpy(v[idx]) for k, v in attrs.items()}
    caps = [captions[i] for i in idx]
    if labels:
        return ImageDataset(x, a["shape"].clone(), levels, len(SHAPES), list(SHAPES), "shapes", caps, a)
    return ImageDataset(x, None, levels, 0, [], "shapes", caps, a)
