"""Checks on what a caller hands the engine: a reference image, a caption, a number of results.

Bad input raises `QueryError`, a ValueError whose message says what is wrong and what to
do, before any model work is spent on it.
"""
from __future__ import annotations

import io
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cir_core.model import SPRCModel
from cir_core.text import TextBatch, clean_caption
from cir_core.transforms import MAX_IMAGE_PIXELS, ImageSizeError, check_image_size, to_rgb

INVISIBLE_CATEGORIES = ("Cc", "Cf", "Zs", "Zl", "Zp")  # control, format (zero-width spaces), separators


class QueryError(ValueError):
    """A query the engine cannot run; the message names the problem and what to do."""


@dataclass
class CaptionCheck:
    """A validated caption, tokenised for the model."""

    text: TextBatch  # (1, L) tokens
    notes: list[str]  # remarks for the user (truncation, unknown words)


def load_query_image(source, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A PIL image, numpy array, image file or encoded image bytes -> RGB image; QueryError if unusable.

    The pixel count is checked from the header before any pixel is decoded, so a forged
    20000x20000 header is refused at once without allocating it.
    """
    if isinstance(source, np.ndarray):
        try:
            source = Image.fromarray(source)
        except (TypeError, ValueError) as error:
            raise QueryError(f"the array cannot be read as an image ({error})") from error
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels)
        return to_rgb(source)
    if isinstance(source, (bytes, bytearray)):
        name, opened = "the uploaded image", io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise QueryError(f"image file {path} does not exist")
        name, opened = path.name, path
    try:
        with Image.open(opened) as image:
            _check_pixels(image.size, max_pixels)
            image.load()
            return to_rgb(image)
    except QueryError:
        raise
    except Image.DecompressionBombError as error:
        raise QueryError(f"{name}: the image is too large to process ({error})") from error
    except UnidentifiedImageError as error:
        raise QueryError(f"{name} is not an image file (or a format Pillow cannot read)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise QueryError(f"{name}: the image file is corrupt or truncated ({error})") from error


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    try:
        check_image_size(*size, max_pixels)
    except ImageSizeError as error:
        raise QueryError(str(error)) from None


def check_caption(model: SPRCModel, caption) -> CaptionCheck:
    """Refuse empty, wordless or unknown-word captions; note truncation and unknown words."""
    if not isinstance(caption, str):
        raise QueryError(f"the caption must be text, got {type(caption).__name__}")
    if not "".join(ch for ch in caption if unicodedata.category(ch) not in INVISIBLE_CATEGORIES).strip():
        raise QueryError("the caption is empty: describe how the target differs from the reference")
    preprocess = model.config.preprocess
    words = caption.split()
    cleaned = clean_caption(caption, preprocess.max_caption_words)
    if not cleaned:
        raise QueryError("the caption has no words once punctuation is removed")
    text = model.tokenize(caption)
    tokenizer = model.tokenizer
    ids = text.input_ids[0].tolist()
    content = [i for i in ids if i not in tokenizer.all_special_ids or i == tokenizer.unk_token_id]
    unknown = sum(1 for i in content if i == tokenizer.unk_token_id)
    if not content:  # e.g. only characters the tokenizer drops
        raise QueryError("the caption has no words the model can read")
    if unknown == len(content):
        raise QueryError("the model knows none of the caption's words (emoji and symbols read as unknown); "
                         "use words, e.g. 'make the circle red'")
    notes = []
    pieces = len(tokenizer(cleaned)["input_ids"])  # of the words kept after cleaning, [CLS] and [SEP] included
    if len(words) > preprocess.max_caption_words or pieces > preprocess.max_caption_tokens:
        notes.append(f"the caption ({len(words)} words) was truncated: the model reads at most "
                     f"{preprocess.max_caption_words} words and {preprocess.max_caption_tokens - 2} word pieces")
    if unknown:
        notes.append(f"{unknown} word piece(s) are unknown to the model and read as [UNK]")
    return CaptionCheck(text=text, notes=notes)


def check_k(k, gallery_size: int) -> int:
    """`k` as a whole number of results, at most the gallery's size; QueryError for anything else."""
    shown = f"{k!r:.50}"  # an int of 10**400 has 401 digits
    if isinstance(k, str):
        try:
            k = int(k.strip()) if k.strip().lstrip("+-").isdigit() else float(k.strip())
        except ValueError:
            raise QueryError(f"k must be a whole number, got {shown}") from None
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        k = int(k)  # compared as an int: float() of a huge one overflows
    elif not isinstance(k, (float, np.floating)) or not math.isfinite(k) or int(k) != k:  # 1.5 is not silently 1
        raise QueryError(f"k must be a whole number, got {shown}")
    k = int(k)
    if k < 1:
        raise QueryError(f"k must be at least 1, got {shown}")
    return min(k, gallery_size)
