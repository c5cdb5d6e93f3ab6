"""CLIP image preprocessing of PIL images without transformers, as its PIL backend computes it.

Convert to RGB (transparency composited on white), resize the shortest edge with the
configured resample filter, center crop (zero-padded when too small), rescale, normalize.
This is the backend transformers picks without torchvision and the one the presets build.
Inputs other than PIL images go to transformers' image processor, loaded on first use.
A configuration it cannot reproduce exactly raises ``UnsupportedProcessor``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tpc.runtimes.light_text import UnsupportedProcessor

log = logging.getLogger(__name__)

CLIP_TYPES = {"CLIPImageProcessor", "CLIPImageProcessorPil"}
CLIP_KEYS = {
    "crop_size",
    "do_center_crop",
    "do_convert_rgb",
    "do_normalize",
    "do_rescale",
    "do_resize",
    "image_mean",
    "image_std",
    "resample",
    "rescale_factor",
    "size",
    "image_processor_type",
    "processor_class",
    "default_to_square",
    "do_pad",
}
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BICUBIC = 3
BILINEAR = 2


class ClipImageProcessor:
    """CLIP preprocessing of PIL images, as transformers' ``CLIPImageProcessorPil`` computes it."""

    _types = CLIP_TYPES
    _keys = CLIP_KEYS
    _batch_padding = False  # CLIP's do_pad would pad images; LLaVA-NeXT's pads the crop axis (handled there)

    def __init__(self, config: dict, fallback_dir: Path | None = None):
        unknown = sorted(set(config) - self._keys)
        if unknown:
            raise UnsupportedProcessor(f"image processor keys {unknown}")
        if config.get("image_processor_type") not in self._types:
            raise UnsupportedProcessor(f"image processor {config.get('image_processor_type')!r}")
        if config.get("do_pad") and not self._batch_padding:
            raise UnsupportedProcessor("do_pad")
        if not config.get("do_convert_rgb", True):
            raise UnsupportedProcessor("do_convert_rgb false")
        self.do_resize = bool(config.get("do_resize", True))
        self.size = config.get("size", {"shortest_edge": 224})
        if not isinstance(self.size, dict) or set(self.size) not in ({"shortest_edge"}, {"height", "width"}):
            raise UnsupportedProcessor(f"size {self.size!r} (handled: shortest_edge, or height and width)")
        self.do_center_crop = bool(config.get("do_center_crop", True))
        self.crop_size = config.get("crop_size", {"height": 224, "width": 224})
        if not isinstance(self.crop_size, dict) or set(self.crop_size) != {"height", "width"}:
            raise UnsupportedProcessor(f"crop_size {self.crop_size!r}")
        self.read_pixel_steps(config)
        self._fallback_dir = fallback_dir
        self._fallback = None

    def read_pixel_steps(self, config: dict) -> None:
        """Resample filter, rescale and normalisation settings, as transformers reads them (shared by the
        CLIP-style and the Qwen processors); anything this module does not reproduce is UnsupportedProcessor."""
        self.resample = config.get("resample", BICUBIC)
        if self.resample is None:
            self.resample = BILINEAR  # transformers' PIL backend: bilinear when unset
        if not isinstance(self.resample, int) or not 0 <= self.resample <= 5:
            raise UnsupportedProcessor(f"resample {self.resample!r}")
        self.do_rescale = bool(config.get("do_rescale", True))
        self.rescale_factor = config.get("rescale_factor", 1 / 255)
        self.do_normalize = bool(config.get("do_normalize", True))
        self.image_mean = config.get("image_mean", OPENAI_CLIP_MEAN)
        self.image_std = config.get("image_std", OPENAI_CLIP_STD)
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                setattr(self, name, [value] * 3)
            elif not (isinstance(value, list) and len(value) == 3):
                raise UnsupportedProcessor(f"{name} {value!r}")

    def to_rgb(self, image) -> np.ndarray:
        """[3, H, W] uint8; transparency composited on white (transformers' ``convert_to_rgb``)."""
        from PIL import Image

        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        else:
            rgb = image.convert("RGB")
        return np.moveaxis(np.array(rgb), -1, 0)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if "shortest_edge" not in self.size:
            return int(self.size["height"]), int(self.size["width"])
        short, long = (width, height) if width <= height else (height, width)
        new_short = int(self.size["shortest_edge"])
        new_long = int(new_short * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def resize(self, image: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """[3, H, W] uint8 resized by PIL to ``size`` (height, width), by default the configured size rule."""
        from PIL import Image

        height, width = self.output_size(*image.shape[1:]) if size is None else size
        resized = Image.fromarray(np.moveaxis(image, 0, -1)).resize((width, height), resample=self.resample)
        return np.moveaxis(np.array(resized), -1, 0)

    def center_crop(self, image: np.ndarray) -> np.ndarray:
        crop_h, crop_w = int(self.crop_size["height"]), int(self.crop_size["width"])
        height, width = image.shape[-2:]
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        bottom, right = top + crop_h, left + crop_w
        if top >= 0 and bottom <= height and left >= 0 and right <= width:
            return image[..., top:bottom, left:right]
        new_h, new_w = max(crop_h, height), max(crop_w, width)
        padded = np.zeros_like(image, shape=image.shape[:-2] + (new_h, new_w))
        top_pad, left_pad = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
        padded[..., top_pad : top_pad + height, left_pad : left_pad + width] = image
        top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
        return padded[..., max(0, top) : min(new_h, bottom), max(0, left) : min(new_w, right)]

    def preprocess(self, image) -> np.ndarray:
        return self.finish(self.to_rgb(image))

    def finish(self, array: np.ndarray) -> np.ndarray:
        """The CLIP steps on a [3, H, W] uint8 array: resize, center crop, rescale, normalize."""
        if self.do_resize:
            array = self.resize(array)
        if self.do_center_crop:
            array = self.center_crop(array)
        if self.do_rescale:
            array = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            if not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float32)
            mean = np.array(self.image_mean, dtype=array.dtype)
            std = np.array(self.image_std, dtype=array.dtype)
            array = ((array.T - mean) / std).T
        return array

    def __call__(self, images, return_tensors: str | None = "np") -> dict[str, np.ndarray]:
        from PIL import Image

        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not all(isinstance(i, Image.Image) for i in images):
            return self._transformers()(images, return_tensors=return_tensors)
        return {"pixel_values": np.stack([self.preprocess(i) for i in images])}

    def _transformers(self):
        """Transformers' image processor, for inputs other than PIL images (arrays, tensors)."""
        if self._fallback is None:
            if self._fallback_dir is None:
                raise UnsupportedProcessor("only PIL images are handled without transformers")
            from transformers import AutoProcessor

            log.debug("image inputs other than PIL images: loading transformers' image processor")
            loaded = AutoProcessor.from_pretrained(str(self._fallback_dir), backend="pil")  # as for PIL inputs
            self._fallback = loaded.image_processor
        return self._fallback
