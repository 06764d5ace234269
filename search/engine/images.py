"""Opening images safely: decoded by content, EXIF orientation applied (ignored when the EXIF
block is malformed), decompression bombs refused, and every failure named by its path."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener
from tqdm import tqdm

from .errors import ImageError

# HEIC, the format iPhones take photos in (and AVIF, which Pillow reads itself)
register_heif_opener()
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".heic", ".heif", ".avif"})

# Pillow's own default warns at ~89 Mpx and raises at twice that; we refuse
# at a fixed, explicit size (about 8,000 x 5,000) whatever Pillow's default is.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(source, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``source`` (a path or a binary file object) into an RGB image (``decode_image``)."""
    return decode_image(source, max_pixels)[0]


def open_query_image(source, at_least: int, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image, tuple[int, int]]:
    """A query decoded no larger than it needs (``decode_image``'s ``at_least``), and the size it has
    in its file, turned as shown: the size its points are reported in."""
    return decode_image(source, max_pixels, at_least)


def decode_image(source, max_pixels: int = MAX_IMAGE_PIXELS, at_least: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """``open_image``'s decode, and the image's size in the file (turned as shown).

    The pixel count is checked from the header before the pixels are decoded,
    so a decompression bomb costs nothing; the full decode then catches
    truncated files.

    With ``at_least``, a JPEG larger than that is decoded at the smallest of its decoder's own
    scales (1/2, 1/4, 1/8) that keeps both sides at least ``at_least`` long: a query needs no more,
    and a 12-megapixel photo decodes in a third of the time (RESULTS.md, "Photos from a phone").
    """
    name = getattr(source, "name", source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{name}: {width}x{height} pixels is over the limit of {max_pixels:,} pixels")
            if at_least > 0:
                image.draft(image.mode, (at_least, at_least))  # a no-op for other formats
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image file (its content is not a known image format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: image is truncated or corrupt ({exc})") from exc
    decoded = image.size
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # EXIF is metadata: a malformed block must not lose the picture, which is kept
        pass  # as stored (Pillow re-packs every tag on the way and fails in several ways: struct.error, ...)
    turned = image.size != decoded
    return to_rgb(image), ((height, width) if turned else (width, height))


# modes of one channel wider than 8 bits, which Pillow's convert("RGB") clips to white above 255
WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def to_rgb(image: Image.Image) -> Image.Image:
    """The picture as a person sees it, in 8-bit RGB: a 16-bit grey scan (archives keep them)
    scaled to 8 bits as a viewer shows it, where ``convert`` would clip it to nearly all white;
    transparent pixels on white, where ``convert`` would show the colour stored under them
    (black, in most product cut-outs)."""
    if image.mode in WIDE_GREY_MODES:
        grey = np.asarray(image, dtype=np.float32)
        top = float(grey.max()) if grey.size else 0.0
        if image.mode == "F" and top <= 1.0:
            grey = grey * 255.0  # a float image in 0..1
        elif top > 255:
            grey = grey / (257.0 if top <= 65535 else top / 255.0)  # 16 bits: the top 8
        return Image.fromarray(np.clip(grey + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def read_resized(path, max_side: int, square: bool = False) -> Image.Image:
    """One image decoded and shrunk so the longer side is ``max_side`` (or squashed to
    ``max_side`` square); ImageError when it cannot be read."""
    image = open_image(path)
    if square:
        return image.resize((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return image


def load_resized(records, max_side: int, square: bool = False, bar: bool = True,
                 then=None) -> tuple[list, list[tuple[str, str]]]:
    """Decode the images of ``records`` (with ``path`` and ``relpath``) once (``read_resized``),
    each passed through ``then`` when given (to keep only what the network will see): training
    holds them in memory. Unreadable ones are ``None`` and reported as (relpath, reason)."""
    images, skipped = [], []
    for record in tqdm(records, desc="reading images", unit="img", leave=False, disable=not bar):
        try:
            image = read_resized(record.path, max_side, square)
            images.append(then(image) if then is not None else image)
        except ImageError as exc:
            skipped.append((record.relpath, str(exc)))
            images.append(None)
    return images, skipped
