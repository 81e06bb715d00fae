"""Decoding images: :func:`to_rgb` turns any PIL image (grey, palette, CMYK, 16-bit, float) into the 8-bit RGB
image every reader hands its transforms (``folders``, ``voc``, ``segmentation``, ``video.io``; the split pipeline's
CPU half, ``src.augment.split``; the positive-pair reader, ``src.evaluation.pair_eval``).
"""
import numpy as np
from PIL import Image


def to_rgb(img):
    """A PIL image as 8-bit RGB, scaling high-bit-depth modes instead of clipping them.

    ``Image.convert("RGB")`` clips a 16-bit grey PNG (mode ``I;16``/``I``, values 0-65535) at 255, which turns
    almost every pixel white; 32-bit float images (``F``) likewise. Those are scaled to 0-255 first: 16-bit by
    1/257 (65535 -> 255), ``I`` and ``F`` by their own maximum when it exceeds 255.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        elif arr.size and arr.max() > 255:
            arr = arr * (255.0 / arr.max())
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")
