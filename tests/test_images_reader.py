"""The one image reader (genlab.data.images): every Pillow mode converted on purpose, errors that name the file,
and the training folder, PNG sample directories and inpainting inputs reading a file the same way."""
import numpy as np
import pytest
from PIL import Image

from genlab.data import load_dataset
from genlab.data.images import ImageReadError, _to_uint8, read_image

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
K = (np.arange(30).reshape(6, 5) * 8 + 7).astype(np.uint16)        # 8-bit values 7..239, written as 257 * k


def over_black(colour, alpha):
    """The expected compositing, computed in floating point."""
    return np.round(colour.astype(np.float64) * alpha[..., None] / 255).astype(np.uint8)


def gray_of(rgb):
    return np.asarray(Image.fromarray(rgb).convert("L"))


def palette_image(transparency=None):
    pal = RNG.integers(0, 256, (4, 3), dtype=np.uint8)
    idx = (np.arange(30).reshape(6, 5) % 4).astype(np.uint8)
    im = Image.frombytes("P", (5, 6), idx.tobytes())
    im.putpalette(pal.ravel().tolist())
    if transparency is not None:
        im.info["transparency"] = bytes(transparency)
    return im, pal[idx], idx


def save(im, tmp_path, ext, **kw):
    path = tmp_path / f"img.{ext}"
    im.save(path, **kw)
    return path


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    # a 16-bit grayscale PNG (Pillow opens it as I;16 or I, by version): 257 * k must read as k, not as white
    path = save(Image.fromarray(K * 257), tmp_path, "png")
    assert Image.open(path).mode in ("I;16", "I")
    assert np.array_equal(read_image(path, 1)[0], K)
    assert np.array_equal(read_image(path, 3), np.repeat(K[None], 3, 0))


@pytest.mark.parametrize("name,build,ext,channels,expected", [
    ("1", lambda: Image.fromarray(GRAY > 127), "png", 1, np.where(GRAY > 127, 255, 0)),
    ("L", lambda: Image.fromarray(GRAY), "png", 3, np.stack([GRAY] * 3, -1)),
    ("RGB", lambda: Image.fromarray(RGB), "png", 3, RGB),
    ("RGB as gray", lambda: Image.fromarray(RGB), "png", 1, gray_of(RGB)),
    ("CMYK", lambda: Image.fromarray(RGB).convert("CMYK"), "tif", 3,
     Image.fromarray(RGB).convert("CMYK").convert("RGB")),
    ("YCbCr", lambda: Image.fromarray(RGB).convert("YCbCr"), "tif", 3,
     Image.fromarray(RGB).convert("YCbCr").convert("RGB")),
    ("LAB", lambda: Image.fromarray(RGB).convert("LAB"), "tif", 1,
     Image.fromarray(RGB).convert("LAB").convert("RGB").convert("L")),
    ("I;16B", lambda: Image.frombytes("I;16B", (5, 6), (K * 257).astype(">u2").tobytes()), "tif", 1, K),
    ("I in 0..65535", lambda: Image.fromarray((K * 257).astype(np.int32)), "tif", 1, K),
    ("F in [0, 1]", lambda: Image.fromarray(GRAY.astype(np.float32) / 255), "tif", 1, GRAY),
    ("RGBA", lambda: Image.fromarray(np.dstack([RGB, ALPHA])), "png", 3, over_black(RGB, ALPHA)),
    ("RGBA as gray", lambda: Image.fromarray(np.dstack([RGB, ALPHA])), "png", 1,
     gray_of(over_black(RGB, ALPHA))),
    ("LA", lambda: Image.fromarray(np.dstack([GRAY, ALPHA])), "png", 1, over_black(GRAY[..., None], ALPHA)[..., 0]),
])
def test_modes_read_from_files(tmp_path, name, build, ext, channels, expected):
    path = save(build(), tmp_path, ext)
    got = read_image(path, channels)
    expected = np.asarray(expected, dtype=np.uint8)
    assert got.dtype == np.uint8 and got.shape == ((1, *expected.shape) if channels == 1 else (3, 6, 5))
    assert np.array_equal(got[0] if channels == 1 else got.transpose(1, 2, 0), expected), name


def test_palette_with_and_without_transparency(tmp_path):
    im, colours, _ = palette_image()
    assert np.array_equal(read_image(save(im, tmp_path, "png"), 3).transpose(1, 2, 0), colours)
    alphas = [255, 128, 0, 31]
    im, colours, idx = palette_image(alphas)
    path = save(im, tmp_path, "png")
    assert Image.open(path).mode == "P"
    got = read_image(path, 3).transpose(1, 2, 0)
    assert np.array_equal(got, over_black(colours, np.array(alphas, np.uint8)[idx]))


def test_pa_tiff_over_black(tmp_path):
    im, colours, idx = palette_image()
    pa = im.convert("PA")
    pa.putalpha(Image.fromarray(ALPHA))
    path = save(pa, tmp_path, "tif")
    assert Image.open(path).mode == "PA"
    assert np.array_equal(read_image(path, 3).transpose(1, 2, 0), over_black(colours, ALPHA))


@pytest.mark.parametrize("mode,data,expected", [
    # modes Pillow cannot save: converted from memory
    ("I;16L", (K * 257).astype("<u2"), K),
    ("I;16N", (K * 257).astype(np.uint16), K),
    ("La", np.dstack([GRAY, ALPHA]), GRAY),               # premultiplied: the colour is the colour over black
    ("RGBa", np.dstack([RGB, ALPHA]), RGB),
])
def test_modes_in_memory(mode, data, expected):
    im = Image.frombytes(mode, (5, 6), np.ascontiguousarray(data).tobytes())
    got = _to_uint8(im, 1 if expected.ndim == 2 else 3)
    assert np.array_equal(got[..., 0] if expected.ndim == 2 else got, expected)


def test_hsv_uses_pillows_conversion():
    hsv = Image.fromarray(RGB).convert("HSV")
    assert np.array_equal(_to_uint8(hsv, 3), np.asarray(hsv.convert("RGB")))


@pytest.mark.parametrize("array,mode,pattern", [
    (np.array([[-0.5, 0.2], [2.0, 1.0]], np.float32), "F", r"\(mode F\).*-0\.5\.\.2.*\[0, 1\]"),
    (np.array([[0.5, np.nan], [0, 1]], np.float32), "F", r"\(mode F\).*NaN.*\[0, 1\]"),
    (np.array([[0, 70000], [-3, 5]], np.int32), "I", r"\(mode I\).*-3\.\.70000.*0\.\.65535"),
])
def test_out_of_range_values_are_refused(tmp_path, array, mode, pattern):
    path = save(Image.fromarray(array), tmp_path, "tif")
    assert Image.open(path).mode == mode
    with pytest.raises(ImageReadError, match=pattern) as err:
        read_image(path, 1)
    assert str(path) in str(err.value) and "re-save it" in str(err.value)


def test_damaged_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG definitely not an image")
    with pytest.raises(ImageReadError, match="garbage.png.*damaged or not an image"):
        read_image(garbage, 3)
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])                       # truncated inside the pixel data
    with pytest.raises(ImageReadError, match=r"cut\.png \(mode RGB\).*truncated"):
        read_image(cut, 3)
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png", 1)


def test_decompression_bomb_is_a_read_error(tmp_path, monkeypatch):
    path = save(Image.fromarray(GRAY), tmp_path, "png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)            # 30 pixels > 2 * 10: refused by Pillow
    with pytest.raises(ImageReadError, match="img.png.*DecompressionBombError"):
        read_image(path, 1)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6                                               # "rotate 90 degrees clockwise to view"
    path = save(Image.fromarray(GRAY), tmp_path, "png", exif=exif)
    assert np.array_equal(read_image(path, 1)[0], np.rot90(GRAY, -1))


def test_folder_eval_and_inpaint_agree_on_a_sixteen_bit_png(tmp_path, monkeypatch):
    from genlab.api import read_image_levels
    from genlab.eval import evaluate

    k = (np.arange(64).reshape(8, 8) * 4).astype(np.uint16)      # 0..252
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):                                            # (an evaluation needs 4 samples)
        Image.fromarray(k * 257).save(folder / f"{i}.png")
    ds = load_dataset("folder", "train+val", root=folder, image_size=8, channels=1)
    assert np.array_equal(ds.x[0, 0].numpy(), k)                   # today: 255 wherever k > 0
    # evaluation maps 8-bit values to the dataset's levels; a stand-in for the digits reference (no featnet)
    monkeypatch.setattr(evaluate, "reference", lambda data="digits", root=None: {"shape": (1, 8, 8), "levels": 17})
    expected = np.round(k / 255 * 16).astype(np.uint8)
    samples = evaluate.load_samples(folder, "digits")
    assert np.array_equal(samples[0, 0], expected) and np.array_equal(samples[1, 0], expected)
    x = read_image_levels(folder / "0.png", (1, 8, 8), 17)
    assert x.shape == (1, 1, 8, 8) and np.array_equal(x[0, 0].numpy(), expected)
    with pytest.raises(ValueError, match="is 8x8 pixels but the model makes 4x4 images"):
        read_image_levels(folder / "0.png", (1, 4, 4), 17)


def test_folder_skips_values_it_refuses(tmp_path):
    Image.fromarray(GRAY).save(tmp_path / "ok.png")
    Image.fromarray(np.full((6, 5), 3.0, np.float32)).save(tmp_path / "float.tif")
    (tmp_path / "float.tif").rename(tmp_path / "float.png")      # a float TIFF under a .png name
    with pytest.raises(ImageReadError, match=r"float\.png \(mode F\).*on_bad_image=skip"):
        load_dataset("folder", "train+val", root=tmp_path, image_size=4, channels=1)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_dataset("folder", "train+val", root=tmp_path, image_size=4, channels=1, on_bad_image="skip")
    assert len(ds) == 1
