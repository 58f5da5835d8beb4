"""Pixels in, pixels out: one resize path for the Omniglot cache and for user images.

The model sees strokes as 1 and background as 0. Omniglot PNGs are black strokes on white,
so they are inverted. User images get the same treatment after a polarity check, and go
through the very same `to_model_pixels`, so a dataset PNG given as a user image comes out
bit-identical to its cached copy / 255. (Inverting before resizing, not after, is what
keeps this exact: LANCZOS rounding is not symmetric under 255 - x.)
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def to_model_pixels(gray: Image.Image, size: int) -> np.ndarray:
    """An 'L' image with light strokes on a dark background -> uint8 (size, size)."""
    if gray.width != gray.height:
        # Pad to a square with background (0) instead of squashing the drawing.
        side = max(gray.width, gray.height)
        square = Image.new("L", (side, side), 0)
        square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
        gray = square
    return np.asarray(gray.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def decode_omniglot_png(path: str | os.PathLike, size: int) -> np.ndarray:
    """One dataset PNG -> uint8 (size, size), strokes high."""
    with Image.open(path) as im:
        return to_model_pixels(ImageOps.invert(im.convert("L")), size)


def _open(src) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(src))
    im = Image.open(src)
    im.load()  # read now: the file handle may be closed by the caller
    return im


def _to_gray(im: Image.Image) -> Image.Image:
    """Grayscale 'L'. Transparent pixels become background, of the colour opposite the ink."""
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if not has_alpha:
        return im.convert("L")
    la = np.asarray(im.convert("LA"), dtype=np.float64)
    lum, alpha = la[..., 0], la[..., 1] / 255.0
    if alpha.min() >= 1.0:
        return Image.fromarray(lum.astype(np.uint8), "L")
    # Ink drawn on a transparent sheet: judge the ink's colour from the visible pixels
    # and put it on the opposite background so the strokes stay visible.
    ink = (lum * alpha).sum() / max(alpha.sum(), 1e-9)
    background = 0.0 if ink > 127.5 else 255.0
    out = lum * alpha + background * (1.0 - alpha)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L")


def has_light_background(gray: np.ndarray) -> bool:
    """True when the drawing is dark on light (Omniglot on disk) and must be inverted.

    The border ring is nearly all background even for heavy strokes, so its median decides;
    the whole image's median breaks an exact tie.
    """
    ring = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    background = float(np.median(ring))
    if background == 127.5:
        background = float(np.median(gray))
    return background > 127.5


def preprocess_image(src, size: int = 28) -> np.ndarray:
    """A user image (path, bytes, file object or PIL image) -> float32 (1, size, size) in [0, 1].

    Any size and mode; EXIF rotation applied; polarity detected so strokes end up as 1.
    """
    im = ImageOps.exif_transpose(_open(src))
    gray = _to_gray(im)
    if has_light_background(np.asarray(gray)):
        gray = ImageOps.invert(gray)
    return (to_model_pixels(gray, size).astype(np.float32) / 255)[None]


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _load(path: Path, size: int) -> np.ndarray:
    try:
        return preprocess_image(path, size)
    except Exception as e:  # PIL's UnidentifiedImageError, truncated files, ...
        raise ValueError(f"cannot read image {path}: {e}") from e


def load_image_folder(folder: str | os.PathLike, size: int = 28, return_paths: bool = False):
    """Images of a folder for the bring-your-own `episode`.

    * one sub-folder per class -> (classes sorted by name, images, labels: list[int])
    * a flat folder of images  -> ([], images, None)
    Images are float32 (1, size, size) arrays, files in name order. With return_paths=True a
    fourth item, the list of file paths in the same order, is appended.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    exts = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _image_files(folder)
    classes: list[str] = []
    paths: list[Path] = []
    labels: list[int] | None = None
    if subdirs:
        if loose:
            raise ValueError(
                f"{folder} mixes class sub-folders with loose images ({loose[0].name}, ...): "
                "put every image in a class folder, or use a flat folder without sub-folders"
            )
        labels = []
        for d in subdirs:
            files = _image_files(d)
            if not files:
                raise ValueError(f"class folder {d} holds no images ({exts})")
            labels += [len(classes)] * len(files)
            classes.append(d.name)
            paths += files
    else:
        paths = loose
        if not paths:
            raise ValueError(f"{folder} holds no images ({exts}) and no class sub-folders")
    images = [_load(p, size) for p in paths]
    return (classes, images, labels, paths) if return_paths else (classes, images, labels)
