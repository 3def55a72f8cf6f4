"""The one image reader of genlab: training folders, directories of PNG samples and inpainting inputs all read
files through :func:`read_image`, so an image means the same thing everywhere.

Every mode Pillow decodes is converted on purpose, never by a silent clip:

- ``1``, ``L``, ``P`` (through its palette), ``RGB``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's
  usual conversion to grayscale (``L``) or ``RGB`` (``LAB`` through ``RGB``);
- 16-bit integers (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, and ``I`` with values in 0..65535, which is how
  some Pillow versions open a 16-bit PNG): value / 257, rounded, so 65535 is 255;
- ``I`` with values outside 0..65535 is refused, and so is ``F`` (floating point) outside [0, 1] or with NaN;
  ``F`` in [0, 1] is scaled by 255 and rounded;
- alpha (``LA``, ``PA``, ``RGBA``, a ``P``, ``L`` or ``RGB`` image with a transparent colour, and the
  premultiplied ``La`` and ``RGBa``) is composited over black: each colour is multiplied by alpha / 255.

Anything else, and any file Pillow cannot decode (damaged, truncated, not an image, a decompression bomb),
raises :class:`ImageReadError`, whose message names the file, its mode when known, and the fix.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
INT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA_MODES = ("LA", "PA", "RGBA", "La", "RGBa")
INT16_MAX = 65535

# what Pillow raises for files it cannot decode (UnidentifiedImageError is an OSError)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)

FIX_RESAVE = "re-save it as an 8-bit grayscale or RGB PNG (or JPEG)"
FIX_DAMAGED = "the file is damaged or not an image: re-export it or delete it"


class ImageReadError(ValueError):
    """An image file genlab cannot use; the message names the file, its mode (when known) and the fix."""


class _Refused(Exception):
    """A decoded image whose values genlab will not guess at: (problem, fix)."""


def _error(path, what: str, mode, problem: str, fix: str) -> ImageReadError:
    where = f"{what} {path}" + (f" (mode {mode})" if mode else "")
    return ImageReadError(f"cannot read {where}: {problem}; {fix}")


def read_image(path, channels: int, what: str = "image") -> np.ndarray:
    """Decode ``path`` fully, apply its EXIF orientation and return uint8 ``C x H x W`` with ``channels`` C = 1
    (grayscale) or 3 (RGB), converting its mode as the module docstring says (alpha composited over black).

    Raises FileNotFoundError for a missing file and :class:`ImageReadError` (a ValueError) for everything else
    that cannot be read; ``what`` names the file's role in the message ("image", "mask").
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    im = _decode(Path(path), what)
    try:
        arr = _to_uint8(im, channels)
    except _Refused as e:
        raise _error(path, what, im.mode, *e.args) from None
    except ValueError as e:          # a conversion this Pillow does not support
        raise _error(path, what, im.mode, f"Pillow cannot convert it ({e})", FIX_RESAVE) from None
    return arr.transpose(2, 0, 1)


def _decode(path: Path, what: str) -> Image.Image:
    """The fully decoded, EXIF-transposed image (detached from the file)."""
    mode = None
    try:
        with Image.open(path) as im:
            mode = im.mode
            im.load()                # decodes fully: truncated files fail here, not later
            return ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise
    except DECODE_ERRORS as e:
        raise _error(path, what, mode, f"Pillow cannot decode it ({type(e).__name__}: {e})", FIX_DAMAGED) from None


def _to_uint8(im: Image.Image, channels: int) -> np.ndarray:
    """uint8 ``H x W x channels`` of a decoded image; _Refused for values genlab does not accept."""
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")      # the palette's / colour key's transparency as an alpha channel
    if im.mode in ALPHA_MODES:
        return _fit(_over_black(im), channels)
    if im.mode in INT16_MODES or im.mode == "I":
        return _fit(_from_int(im), channels)
    if im.mode == "F":
        return _fit(_from_float(im), channels)
    if im.mode in PLAIN_MODES:
        if im.mode == "LAB":         # Pillow converts LAB to RGB only
            im = im.convert("RGB")
        return _as_hwc(im.convert("L" if channels == 1 else "RGB"))
    raise _Refused(f"genlab does not read images of mode {im.mode}", FIX_RESAVE)


def _as_hwc(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _fit(arr: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``H x W x 1`` or ``x 3`` to ``channels`` by Pillow's usual L <-> RGB conversion."""
    if arr.shape[-1] == channels:
        return arr
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    return _as_hwc(im.convert("L" if channels == 1 else "RGB"))


def _over_black(im: Image.Image) -> np.ndarray:
    """The colour channels composited over black: round(colour * alpha / 255)."""
    if im.mode in ("La", "RGBa"):    # premultiplied: the colour already is the colour over black
        return np.ascontiguousarray(np.asarray(im)[..., :-1])
    if im.mode == "PA":
        im = im.convert("RGBA")
    a = np.asarray(im).astype(np.uint32)
    colour, alpha = a[..., :-1], a[..., -1:]
    return ((colour * alpha + 127) // 255).astype(np.uint8)   # exact rounding: no ties, 255 is odd


def _value_range(a: np.ndarray) -> str:
    return f"{a.min():g}..{a.max():g}" if a.size else "no values"


def _from_int(im: Image.Image) -> np.ndarray:
    """16-bit values (also mode I within 0..65535) / 257, rounded."""
    a = np.asarray(im)
    if a.size and (a.min() < 0 or a.max() > INT16_MAX):
        raise _Refused(f"its values span {_value_range(a)}, outside the accepted range 0..{INT16_MAX} of "
                       "32-bit integer images", f"rescale it to 0..{INT16_MAX} (16-bit) or {FIX_RESAVE}")
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)[..., None]   # exact rounding: 257 is odd


def _from_float(im: Image.Image) -> np.ndarray:
    """Floating-point values in [0, 1] times 255, rounded."""
    a = np.asarray(im, dtype=np.float64)
    if np.isnan(a).any():
        raise _Refused("it holds NaN values; floating-point images must lie in the accepted range [0, 1]",
                       f"replace the NaNs or {FIX_RESAVE}")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise _Refused(f"its values span {_value_range(a)}, outside the accepted range [0, 1] of "
                       "floating-point images", f"scale it to [0, 1] or {FIX_RESAVE}")
    return np.round(a * 255).astype(np.uint8)[..., None]
