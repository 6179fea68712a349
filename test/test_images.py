"""Decoding camera frames: sensor_msgs/Image encodings (row padding, byte order, depth), CompressedImage, resizing."""

import cv2
import numpy as np
import pytest

from jepa_wm.data.images import (ENCODINGS, ImageFormatError, compressed_to_rgb, image_to_rgb, resize_rgb,
                                 rgb_to_image_fields)


def _rgb(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _padded(pixels: np.ndarray, pad: int, last_row_padded: bool = True) -> tuple[int, bytes]:
    """(step, data) of rows followed by `pad` junk bytes, as a driver with aligned rows sends them."""
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    junk = np.full((rows.shape[0], pad), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1).reshape(-1)
    if not last_row_padded:
        data = data[:data.size - pad]
    return rows.shape[1] + pad, data.tobytes()


def test_rgb8_round_trip_through_image_fields():
    rgb = _rgb()
    fields = rgb_to_image_fields(rgb)
    assert (fields["encoding"], fields["height"], fields["width"], fields["step"]) == ("rgb8", 6, 5, 15)
    out = image_to_rgb(**fields)
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, rgb)
    # bytes (as from a bag) work like an array
    np.testing.assert_array_equal(image_to_rgb("rgb8", 6, 5, 15, rgb.tobytes()), rgb)


def test_rgb_to_image_fields_rejects_non_rgb_arrays():
    with pytest.raises(ImageFormatError, match="shape"):
        rgb_to_image_fields(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageFormatError, match="shape"):
        rgb_to_image_fields(np.zeros((4, 4, 4), np.uint8))


@pytest.mark.parametrize("last_row_padded", [True, False])
def test_row_padding_is_dropped(last_row_padded):
    rgb = _rgb(h=4, w=3)
    step, data = _padded(rgb, pad=7, last_row_padded=last_row_padded)
    assert step == 16
    np.testing.assert_array_equal(image_to_rgb("rgb8", 4, 3, step, data), rgb)


def test_bgr8_and_8uc3_swap_to_rgb():
    rgb = _rgb()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_array_equal(image_to_rgb("bgr8", 6, 5, 15, bgr.tobytes()), rgb)
    np.testing.assert_array_equal(image_to_rgb("8UC3", 6, 5, 15, bgr.tobytes()), rgb)
    step, data = _padded(bgr, pad=1)
    np.testing.assert_array_equal(image_to_rgb("bgr8", 6, 5, step, data), rgb)


def test_four_channel_encodings_drop_alpha():
    rgb = _rgb()
    alpha = np.full((6, 5, 1), 9, np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    bgra = np.concatenate([rgb[..., ::-1], alpha], axis=2)
    np.testing.assert_array_equal(image_to_rgb("rgba8", 6, 5, 20, rgba.tobytes()), rgb)
    np.testing.assert_array_equal(image_to_rgb("bgra8", 6, 5, 20, bgra.tobytes()), rgb)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_becomes_grey_rgb(encoding):
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    step, data = _padded(mono[..., None], pad=4)
    out = image_to_rgb(encoding, 3, 4, step, data)
    assert out.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], mono)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("bigendian", [0, 1])
def test_16_bit_depth_is_normalised_per_frame_in_either_byte_order(encoding, bigendian):
    depth = np.array([[1000, 1500], [2000, 3000], [1000, 3000]], np.uint16)
    raw = depth.astype(">u2" if bigendian else "<u2")
    step, data = _padded(raw[..., None], pad=2)  # 4 bytes of pixels + 2 of padding per row
    assert step == 6
    out = image_to_rgb(encoding, 3, 2, step, data, is_bigendian=bigendian)
    expected = np.round((depth - 1000) / 2000 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 1], expected)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255
    # Read in the wrong byte order, the frame would not decode to the same picture.
    wrong = image_to_rgb(encoding, 3, 2, step, data, is_bigendian=1 - bigendian)
    assert not np.array_equal(wrong, out)


def test_float_depth_with_invalid_pixels():
    depth = np.array([[0.5, np.nan], [1.5, np.inf]], np.float32)
    out = image_to_rgb("32FC1", 2, 2, 8, depth.tobytes())
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [255, 0]])
    blank = image_to_rgb("32FC1", 1, 2, 8, np.array([np.nan, np.nan], np.float32).tobytes())
    np.testing.assert_array_equal(blank, 0)
    flat = image_to_rgb("16UC1", 1, 3, 6, np.full(3, 700, np.uint16).tobytes())
    np.testing.assert_array_equal(flat, 0)  # one value: no range, no division by zero


def _mosaic(pattern: str, colour, h=8, w=8) -> np.ndarray:
    """A Bayer mosaic of a uniform colour; pattern gives the colours of the top-left 2x2 cell, row-major."""
    value = dict(zip("rgb", colour))
    mosaic = np.zeros((h, w), np.uint8)
    for k, ch in enumerate(pattern):
        mosaic[k // 2::2, k % 2::2] = value[ch]
    return mosaic


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_give_the_right_colour(pattern):
    colour = (200, 100, 30)
    out = image_to_rgb(f"bayer_{pattern}8", 8, 8, 8, _mosaic(pattern, colour).tobytes())
    assert out.shape == (8, 8, 3)
    np.testing.assert_allclose(out[2:6, 2:6].reshape(-1, 3), np.tile(colour, (16, 1)), atol=2)


def test_packed_yuv_orders_are_told_apart():
    y, u, v = 150, 90, 200  # a saturated colour, so U and V swapped would show
    uyvy = np.tile(np.array([u, y, v, y], np.uint8), (2, 2))  # 2 rows of 4 pixels
    yuyv = np.tile(np.array([y, u, y, v], np.uint8), (2, 2))
    a = image_to_rgb("uyvy", 2, 4, 8, uyvy.tobytes())
    b = image_to_rgb("yuv422_yuy2", 2, 4, 8, yuyv.tobytes())
    assert a.shape == (2, 4, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(image_to_rgb("yuv422", 2, 4, 8, uyvy.tobytes()), a)
    np.testing.assert_array_equal(image_to_rgb("yuyv", 2, 4, 8, yuyv.tobytes()), a)
    assert np.all(a == a[0, 0]) and a[0, 0, 0] > a[0, 0, 2]  # V > 128: reddish, not bluish


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_odd_width_packed_yuv_is_an_image_format_error(encoding):
    # OpenCV raises cv2.error here, which a node catching ValueError would die of.
    with pytest.raises(ImageFormatError, match=rf"{encoding} image has odd width 3"):
        image_to_rgb(encoding, 2, 3, 6, bytes(12))


def test_every_listed_encoding_decodes():
    for enc in ENCODINGS:
        out = image_to_rgb(enc, 2, 4, 64, bytes(2 * 64))
        assert out.shape == (2, 4, 3) and out.dtype == np.uint8, enc


def test_unsupported_encoding_is_named():
    with pytest.raises(ImageFormatError, match=r"unsupported image encoding 'nv12'.*rgb8"):
        image_to_rgb("nv12", 2, 2, 2, bytes(6))


def test_truncated_data_is_an_image_format_error():
    rgb = _rgb(h=4, w=4)
    with pytest.raises(ImageFormatError, match=r"too short: 30 bytes for height 4 x step 12"):
        image_to_rgb("rgb8", 4, 4, 12, rgb.tobytes()[:30])
    with pytest.raises(ImageFormatError, match="too short"):
        image_to_rgb("mono16", 4, 4, 8, bytes(31))


def test_step_smaller_than_a_row_and_zero_size_are_errors():
    with pytest.raises(ImageFormatError, match=r"step 10 < width 4 x 3"):
        image_to_rgb("rgb8", 2, 4, 10, bytes(24))
    with pytest.raises(ImageFormatError, match="zero size"):
        image_to_rgb("rgb8", 0, 4, 12, b"")
    assert issubclass(ImageFormatError, ValueError)


def test_compressed_png_is_lossless_and_rgb():
    rgb = _rgb(h=16, w=12)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(compressed_to_rgb("rgb8; png compressed bgr8", png.tobytes()), rgb)


def test_compressed_jpeg_keeps_the_colour():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 220  # red
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_to_rgb("jpeg", list(jpg.tobytes()))  # rosbags may hand over a sequence of ints
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [220, 0, 0], atol=4)


def test_corrupt_or_empty_compressed_image_is_an_error():
    with pytest.raises(ImageFormatError, match="could not be decoded"):
        compressed_to_rgb("jpeg", b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageFormatError, match="no data"):
        compressed_to_rgb("png", b"")


def test_resize_rgb_averages_when_shrinking():
    blocks = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = blocks.repeat(2, axis=0).repeat(2, axis=1)  # 64x64 of 2x2 blocks
    out = resize_rgb(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, blocks)
    assert resize_rgb(out, 32) is out  # already the size: untouched
    # A thin stripe survives shrinking as a blend, not dropped (no aliasing).
    stripe = np.zeros((64, 64, 3), np.uint8)
    stripe[:, 33] = 255
    assert resize_rgb(stripe, 16).max() > 0


def test_resize_rgb_non_square_and_upscale():
    img = _rgb(h=48, w=64)
    assert resize_rgb(img, 32).shape == (32, 32, 3)
    up = resize_rgb(np.full((8, 8, 3), 77, np.uint8), 32)
    assert up.shape == (32, 32, 3)
    np.testing.assert_array_equal(up, 77)
