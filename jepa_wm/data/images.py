"""Camera frames to RGB arrays: every sensor_msgs/Image encoding cv_bridge users send, and CompressedImage.

Shared by the bag reader and the ROS nodes, so it takes the message's plain
fields (no message types, no rclpy) and returns uint8 (H, W, 3) RGB. Depth-like
encodings (mono16, 16UC1, 32FC1) are normalised to 0..255 per frame, so a
depth camera can feed the same encoder. Malformed frames raise
ImageFormatError saying what is wrong, never a numpy reshape or OpenCV error.
"""

from __future__ import annotations

import cv2
import numpy as np


class ImageFormatError(ValueError):
    pass


# encoding -> (dtype, channels)
_LAYOUT = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "8UC3": (np.uint8, 3),  # cv_bridge treats it as bgr8
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
    "bayer_rggb8": (np.uint8, 1),
    "bayer_bggr8": (np.uint8, 1),
    "bayer_gbrg8": (np.uint8, 1),
    "bayer_grbg8": (np.uint8, 1),
    "yuv422": (np.uint8, 2),  # UYVY
    "uyvy": (np.uint8, 2),
    "yuv422_yuy2": (np.uint8, 2),  # YUYV
    "yuyv": (np.uint8, 2),
}

# OpenCV names Bayer patterns by the second row's first two pixels, so ROS "rggb" is OpenCV "BG".
_BAYER = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}

ENCODINGS = tuple(_LAYOUT)
_YUV422 = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")


def _pixels(encoding, height, width, step, data, is_bigendian) -> np.ndarray:
    """The (H, W, C) array of the message's pixels, with row padding dropped and byte order fixed."""
    dtype, channels = _LAYOUT[encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if is_bigendian else "<")
    row = width * channels * dtype.itemsize
    if height <= 0 or width <= 0:
        raise ImageFormatError(f"{encoding} image has zero size ({width}x{height})")
    if step < row:
        raise ImageFormatError(f"{encoding} image: step {step} < width {width} x {channels * dtype.itemsize} "
                               f"bytes per pixel = {row}")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    # The last row need not carry its padding.
    if buf.size < (height - 1) * step + row:
        raise ImageFormatError(f"{encoding} image data too short: {buf.size} bytes for height {height} x step {step}")
    if buf.size < height * step:
        buf = np.concatenate([buf, np.zeros(height * step - buf.size, np.uint8)])
    rows = buf[:height * step].reshape(height, step)[:, :row]
    return np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels).astype(dtype.newbyteorder("="))


def _normalise(depth: np.ndarray) -> np.ndarray:
    """Depth-like values to 0..255 over this frame's finite range (NaN/inf -> 0)."""
    d = depth.astype(np.float32)
    finite = np.isfinite(d)
    if not finite.any():
        return np.zeros(d.shape, np.uint8)
    lo, hi = d[finite].min(), d[finite].max()
    out = np.where(finite, (d - lo) / max(hi - lo, 1e-12) * 255.0, 0.0)
    return out.round().astype(np.uint8)


def image_to_rgb(encoding: str, height: int, width: int, step: int, data, is_bigendian: int = 0) -> np.ndarray:
    """A sensor_msgs/Image's fields -> uint8 (H, W, 3) RGB."""
    if encoding not in _LAYOUT:
        raise ImageFormatError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    if encoding in _YUV422 and int(width) % 2:
        # 4:2:2 packs two pixels per U/V pair; OpenCV would raise cv2.error (not a ValueError) on an odd width.
        raise ImageFormatError(f"{encoding} image has odd width {int(width)}: 4:2:2 YUV packs pixels in pairs, "
                               "so the width must be even")
    px = _pixels(encoding, int(height), int(width), int(step), data, bool(is_bigendian))
    if encoding == "rgb8":
        return px
    if encoding in ("bgr8", "8UC3"):
        return px[..., ::-1].copy()
    if encoding == "rgba8":
        return px[..., :3].copy()
    if encoding == "bgra8":
        return px[..., 2::-1].copy()
    if encoding in ("mono8", "8UC1"):
        return np.repeat(px, 3, axis=2)
    if encoding in ("mono16", "16UC1", "32FC1"):
        return np.repeat(_normalise(px[..., 0])[..., None], 3, axis=2)
    if encoding in _BAYER:
        return cv2.cvtColor(px[..., 0], _BAYER[encoding])
    if encoding in ("yuv422", "uyvy"):
        return cv2.cvtColor(px, cv2.COLOR_YUV2RGB_UYVY)
    return cv2.cvtColor(px, cv2.COLOR_YUV2RGB_YUY2)


def compressed_to_rgb(format: str, data) -> np.ndarray:
    """A sensor_msgs/CompressedImage's fields (format e.g. 'jpeg', 'rgb8; png compressed bgr8') -> RGB."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if buf.size == 0:
        raise ImageFormatError(f"compressed image ({format!r}) has no data")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageFormatError(f"compressed image ({format!r}, {buf.size} bytes) could not be decoded: corrupt or "
                               "not JPEG/PNG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def rgb_to_image_fields(rgb: np.ndarray) -> dict:
    """uint8 (H, W, 3) RGB -> the fields of an rgb8 sensor_msgs/Image."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageFormatError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    return {"encoding": "rgb8", "height": h, "width": w, "step": 3 * w, "data": rgb.reshape(-1)}


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size (area interpolation: no aliasing when shrinking a camera frame)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if min(img.shape[:2]) >= size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)
