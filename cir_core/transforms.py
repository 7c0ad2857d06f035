"""Image preprocessing: the one place that turns a PIL image into model input.

TargetPad (official SPRC): when the long/short side ratio exceeds `target_pad_ratio`,
pad the short side symmetrically with black up to that ratio; then resize the short
side (bicubic), center-crop, scale to [0, 1] and normalise with CLIP mean/std.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from cir_core.config import RESAMPLE_FILTERS, PreprocessConfig

_RESAMPLE = {name: Image.Resampling[name.upper()] for name in RESAMPLE_FILTERS}


def target_pad(image: Image.Image, ratio: float) -> Image.Image:
    width, height = image.size
    long_side, short_side = max(width, height), min(width, height)
    if short_side == 0:
        raise ValueError("image has a zero-length side")
    if long_side / short_side <= ratio:
        return image
    padded_short = int(round(long_side / ratio))
    pad_total = padded_short - short_side
    first = pad_total // 2
    if width < height:
        border = (first, 0, pad_total - first, 0)
    else:
        border = (0, first, 0, pad_total - first)
    return ImageOps.expand(image, border=border, fill=(0, 0, 0))


# Query and gallery images beyond these limits are refused from their header, before any
# pixel is decoded: larger files could exhaust memory (decompression bombs), and longer
# strips would be mostly padding once target-padded.
MAX_IMAGE_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 50


class ImageSizeError(ValueError):
    """An image too large or too elongated to process; the message says which and what to do."""


def check_image_size(width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Raise ImageSizeError for a size (read from the file's header) that must not be decoded."""
    if width < 1 or height < 1:
        raise ImageSizeError(f"the image has no pixels ({width}x{height})")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageSizeError(f"the image is {width}x{height}: sides more than {MAX_ASPECT_RATIO}:1 apart are not "
                             "a picture the model can read (crop it first)")
    if width * height > max_pixels:
        raise ImageSizeError(f"the image is {width}x{height} = {width * height / 1e6:.0f} megapixels; "
                             f"the limit is {max_pixels / 1e6:.0f} megapixels (downscale it first)")


PAD_GROWTH_LIMIT = 4  # padding may multiply the pixel count by this much before the image is shrunk first


def shrink_before_padding(image: Image.Image, ratio: float, size: int) -> Image.Image:
    """`image` downscaled first when target padding would blow it up (a 40000x1 strip padded to
    40000x32000 is 1.3 billion pixels); images whose padding adds little are returned as they are.

    The shrunk image's padded short side is 4x the model's input `size`, so the final resize
    still has detail to average.
    """
    width, height = image.size
    long_side, short_side = max(width, height), min(width, height)
    if short_side == 0 or long_side / short_side <= ratio:
        return image
    padded_short = long_side / ratio
    if long_side * padded_short <= PAD_GROWTH_LIMIT * width * height:
        return image
    scale = min(1.0, 4 * size / padded_short)
    if scale == 1.0:
        return image
    shrunk = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(shrunk, Image.Resampling.BOX)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with EXIF rotation applied, alpha composited on white, 16-bit and CMYK converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size else 0
        scale = 255.0 / (65535.0 if peak > 255 else 255.0)
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


class ImageTransform:
    """Callable: PIL image -> (3, S, S) float tensor, as configured."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        if config.resample not in _RESAMPLE:
            raise ValueError(f"unknown resample {config.resample!r}; choose from {sorted(_RESAMPLE)}")
        self._mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """The geometric part (pad, resize, crop) on an RGB image; also used to draw heatmaps."""
        size = self.config.image_size
        image = shrink_before_padding(image, self.config.target_pad_ratio, size)
        image = target_pad(image, self.config.target_pad_ratio)
        width, height = image.size
        scale = size / min(width, height)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new_size, _RESAMPLE[self.config.resample])
        left = (new_size[0] - size) // 2
        top = (new_size[1] - size) // 2
        return image.crop((left, top, left + size, top + size))

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """(3, S, S) uint8 pixels of the resized and cropped image, before normalisation."""
        rgb = self.resize_and_crop(to_rgb(image))
        return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (..., 3, S, S) -> float, scaled to [0, 1] and normalised with the configured mean/std."""
        return (pixels.float() / 255.0 - self._mean) / self._std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalize(self.to_uint8(image))

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, 3, S, S) from a list of PIL images."""
        return torch.stack([self(image) for image in images])
