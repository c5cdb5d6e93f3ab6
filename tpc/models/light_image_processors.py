"""The multi-crop families' image preprocessing without transformers, pixel for pixel.

* LLaVA-NeXT ("anyres"), as ``LlavaNextImageProcessorPil`` computes it: resize to fit the best
  of ``image_grid_pinpoints`` (aspect ratio kept), zero-pad to it, cut it into crops, put the
  whole image resized to the crop size first, and take every crop through the CLIP steps.
  ``preprocess_anyres`` returns each image's crops unpadded, with the original sizes;
  ``geometry`` says what ``tpc.models.anyres`` needs.
* LLaVA-OneVision, as ``LlavaOnevisionImageProcessorPil`` computes it: the same anyres crops,
  cut at the ``height x width`` size (no center crop), SigLIP's mean/std.
* Qwen2-VL / Qwen2.5-VL, as ``Qwen2VLImageProcessorPil`` computes it: resize to the ``smart_resize``
  size (sides multiples of patch * merge, area within min/max pixels), rescale, normalize, then
  flatten into patches in processor order (each patch repeated ``temporal_patch_size`` times);
  ``preprocess_grid`` may first force an image onto a given size (a compiled grid).

``IMAGE_PROCESSORS`` tells ``tpc.runtimes.light_processor`` which processor class holds which
image processor types and how to build it; the runtime names no family.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tpc.runtimes.light_images import BICUBIC, CLIP_KEYS, ClipImageProcessor
from tpc.runtimes.light_text import UnsupportedProcessor

log = logging.getLogger(__name__)

NEXT_TYPES = {"LlavaNextImageProcessor", "LlavaNextImageProcessorPil"}
NEXT_KEYS = CLIP_KEYS | {"image_grid_pinpoints", "aspect_ratio_setting"}
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # transformers' default
ONEVISION_TYPES = {"LlavaOnevisionImageProcessor", "LlavaOnevisionImageProcessorPil"}
# transformers' LlavaOnevisionImageProcessor defaults: every grid of 1..6 x 1..6 crops of 384 px
ONEVISION_PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]


class LlavaNextImageProcessor(ClipImageProcessor):
    """LLaVA-NeXT anyres preprocessing of PIL images, as transformers' ``LlavaNextImageProcessorPil`` computes it.

    ``patch_size`` (the processor's, from ``processor_config.json``) gives ``geometry``'s tokens per side.
    """

    _types = NEXT_TYPES
    _keys = NEXT_KEYS
    _batch_padding = True

    def __init__(
        self,
        config: dict,
        fallback_dir: Path | None = None,
        *,
        patch_size: int | None = None,
        num_additional_image_tokens: int = 0,
        vision_feature_select_strategy: str | None = None,
    ):
        from tpc.models.anyres import check_pinpoints

        super().__init__(config, fallback_dir)
        if config.get("aspect_ratio_setting", "anyres") != "anyres":
            raise UnsupportedProcessor(f"aspect_ratio_setting {config['aspect_ratio_setting']!r}")
        self.do_pad = bool(config.get("do_pad", True))  # across images, in __call__ only
        if int(self.crop_size["height"]) != int(self.crop_size["width"]) or not self.do_center_crop:
            raise UnsupportedProcessor(f"crop_size {self.crop_size!r} with do_center_crop {self.do_center_crop}")
        self.crop = int(self.crop_size["height"])  # what transformers cuts the padded image into
        if "shortest_edge" in self.size:
            self.base_size = (int(self.size["shortest_edge"]),) * 2
        else:
            self.base_size = (int(self.size["height"]), int(self.size["width"]))
        try:
            self.pinpoints = check_pinpoints(config.get("image_grid_pinpoints", NEXT_PINPOINTS), self.crop)
        except (TypeError, ValueError) as exc:
            raise UnsupportedProcessor(f"image_grid_pinpoints: {exc}") from None
        if not isinstance(patch_size, int) or patch_size < 1 or self.crop % patch_size:
            raise UnsupportedProcessor(f"patch_size {patch_size!r} for crops of {self.crop}")
        if vision_feature_select_strategy not in ("default", "full"):
            raise UnsupportedProcessor(f"vision_feature_select_strategy {vision_feature_select_strategy!r}")
        if not isinstance(num_additional_image_tokens, int) or num_additional_image_tokens < 0:
            raise UnsupportedProcessor(f"num_additional_image_tokens {num_additional_image_tokens!r}")
        self.image_grid_pinpoints = self.pinpoints  # transformers' attribute name
        self.geometry = {
            "pinpoints": self.pinpoints,
            "crop_size": self.crop,
            "tokens_per_side": self.crop // patch_size,
            "num_additional_image_tokens": num_additional_image_tokens,
            "vision_feature_select_strategy": vision_feature_select_strategy,
        }

    def crops(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        """One PIL image: its crops [1 + grid_h * grid_w, 3, crop, crop] float32 and its (height, width)."""
        from tpc.models.anyres import padding, patch_output_size, select_best_resolution

        array = self.to_rgb(image)
        size = (int(array.shape[1]), int(array.shape[2]))
        best = select_best_resolution(size, self.pinpoints)
        resized = self.resize(array, patch_output_size(size, best))
        padded = np.pad(resized, ((0, 0), *padding(resized.shape[1:], best)), mode="constant", constant_values=0)
        pieces = [self.resize(array, self.base_size)]
        pieces += [
            padded[:, top : top + self.crop, left : left + self.crop]
            for top in range(0, best[0], self.crop)
            for left in range(0, best[1], self.crop)
        ]
        return np.array([self.finish(piece) for piece in pieces]), size

    def preprocess_anyres(self, images) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Each image's crops ``[n_crops_i, 3, crop, crop]`` (not padded across images) and its original
        ``(height, width)``, as transformers computes them; inputs other than PIL images go to transformers."""
        from PIL import Image

        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not all(isinstance(i, Image.Image) for i in images):
            out = self._transformers()(images, do_pad=False, return_tensors=None)
            pixels = [np.asarray(p, dtype=np.float32) for p in out["pixel_values"]]
            return pixels, [(int(h), int(w)) for h, w in out["image_sizes"]]
        results = [self.crops(i) for i in images]
        return [r[0] for r in results], [r[1] for r in results]

    def image_token_count(self, image_hw) -> int:
        """The ``<image>`` placeholders ``LlavaNextProcessor`` writes for an image of ``image_hw``."""
        from tpc.models.anyres import image_token_count

        g = self.geometry
        return image_token_count(
            image_hw,
            g["pinpoints"],
            g["crop_size"],
            g["tokens_per_side"],
            num_additional_image_tokens=g["num_additional_image_tokens"],
            vision_feature_select_strategy=g["vision_feature_select_strategy"],
        )

    def __call__(self, images, return_tensors: str | None = "np") -> dict:
        """What transformers returns: ``pixel_values`` [B, most crops, 3, crop, crop] (zero crops pad the
        shorter images when ``do_pad``, a list of per-image arrays otherwise) and ``image_sizes`` [B, 2]."""
        from PIL import Image

        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not all(isinstance(i, Image.Image) for i in images):
            return self._transformers()(images, return_tensors=return_tensors)
        pixels, sizes = self.preprocess_anyres(images)
        if self.do_pad:
            most = max(len(p) for p in pixels)
            pixels = np.stack([np.pad(p, ((0, most - len(p)), (0, 0), (0, 0), (0, 0))) for p in pixels])
        return {"pixel_values": pixels, "image_sizes": np.array(sizes, dtype=np.int64)}


class LlavaOnevisionImageProcessor(LlavaNextImageProcessor):
    """LLaVA-OneVision anyres preprocessing of PIL images, as ``LlavaOnevisionImageProcessorPil`` computes it:
    LLaVA-NeXT's crops, cut at ``size`` (height = width, the crop side; no center crop), every crop resized
    to ``size``, rescaled and normalized. ``num_image_tokens`` (the processor's, 729 for 384 px SigLIP crops)
    gives the tokens per side, ``vision_aspect_ratio`` the ``anyres_max_N`` downsampling bound."""

    _types = ONEVISION_TYPES

    def __init__(
        self,
        config: dict,
        fallback_dir: Path | None = None,
        *,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
    ):
        from tpc.models.anyres import check_pinpoints, max_crops_of

        config = dict(config)
        if config.get("do_center_crop"):
            raise UnsupportedProcessor("do_center_crop (LLaVA-OneVision's processor does not crop)")
        size = config.get("size", {"height": 384, "width": 384})
        if not isinstance(size, dict) or set(size) != {"height", "width"} or size["height"] != size["width"]:
            raise UnsupportedProcessor(f"size {size!r} (handled: height = width)")
        config["size"] = size
        config["do_center_crop"] = False
        config["crop_size"] = dict(size)  # unused: no center crop
        config.setdefault("resample", BICUBIC)
        ClipImageProcessor.__init__(self, config, fallback_dir)
        self.do_pad = bool(config.get("do_pad", True))  # across images, in __call__ only
        self.crop = int(size["height"])
        self.base_size = (int(size["height"]), int(size["width"]))
        try:
            self.pinpoints = check_pinpoints(config.get("image_grid_pinpoints", ONEVISION_PINPOINTS), self.crop)
            max_crops = max_crops_of(vision_aspect_ratio if vision_aspect_ratio is not None else "anyres_max_9")
        except (TypeError, ValueError) as exc:
            raise UnsupportedProcessor(str(exc)) from None
        side = int(round(num_image_tokens**0.5)) if isinstance(num_image_tokens, int) and num_image_tokens > 0 else 0
        if side * side != num_image_tokens:
            raise UnsupportedProcessor(f"num_image_tokens {num_image_tokens!r} is not a square patch grid")
        if vision_feature_select_strategy not in ("full", None):
            raise UnsupportedProcessor(f"vision_feature_select_strategy {vision_feature_select_strategy!r}")
        self.image_grid_pinpoints = self.pinpoints
        self.geometry = {
            "pinpoints": self.pinpoints,
            "crop_size": self.crop,
            "tokens_per_side": side,
            "max_crops": max_crops,
            "vision_feature_select_strategy": "full",
        }

    def preprocess_base(self, images) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """The pictures of a prompt with SEVERAL pictures: each one crop [1, 3, size, size] (padded to a square
        with the mean colour, centred, then resized; no anyres crops), as transformers does for a sample of
        more than one image, and its (height, width); inputs other than PIL images go to transformers."""
        from PIL import Image

        images = list(images)
        if not all(isinstance(i, Image.Image) for i in images):
            out = self._transformers()([images], do_pad=False, return_tensors=None)  # one sample: several images
            pixels = [np.asarray(p, dtype=np.float32) for p in out["pixel_values"]]
            return pixels, [(int(h), int(w)) for h, w in out["image_sizes"]]
        crops, sizes = [], []
        for image in images:
            array = self.to_rgb(image)
            channels, height, width = array.shape
            side = max(height, width)
            square = np.empty((channels, side, side), dtype=array.dtype)
            square[:] = np.array([int(m * 255) for m in self.image_mean], dtype=array.dtype)[:, None, None]
            top, left = (side - height) // 2, (side - width) // 2
            square[:, top : top + height, left : left + width] = array
            crops.append(self.finish(square)[None])
            sizes.append((height, width))
        return crops, sizes

    def image_token_count(self, image_hw) -> int:
        """The ``<image>`` placeholders ``LlavaOnevisionProcessor`` writes for an image of ``image_hw``."""
        from tpc.models.anyres import onevision_token_count

        g = self.geometry
        return onevision_token_count(image_hw, g["pinpoints"], g["crop_size"], g["tokens_per_side"], g["max_crops"])

    def _transformers(self):
        """transformers' image processor (PIL backend), for inputs other than PIL images; not through
        ``AutoProcessor``, which needs torchvision for this processor's video part."""
        if self._fallback is None:
            if self._fallback_dir is None:
                raise UnsupportedProcessor("only PIL images are handled without transformers")
            from transformers import AutoImageProcessor

            log.debug("image inputs other than PIL images: loading transformers' image processor")
            self._fallback = AutoImageProcessor.from_pretrained(str(self._fallback_dir), backend="pil")
        return self._fallback


def _clip(image_config, directory, processor_config):
    return ClipImageProcessor(image_config, directory)


def _next(image_config, directory, processor_config):
    return LlavaNextImageProcessor(
        image_config,
        directory,
        patch_size=processor_config.get("patch_size"),
        num_additional_image_tokens=processor_config.get("num_additional_image_tokens", 0),
        vision_feature_select_strategy=processor_config.get("vision_feature_select_strategy"),
    )


def _onevision(image_config, directory, processor_config):
    return LlavaOnevisionImageProcessor(
        image_config,
        directory,
        num_image_tokens=processor_config.get("num_image_tokens"),
        vision_feature_select_strategy=processor_config.get("vision_feature_select_strategy"),
        vision_aspect_ratio=processor_config.get("vision_aspect_ratio"),
    )


QWEN_TYPES = {"Qwen2VLImageProcessor", "Qwen2VLImageProcessorPil"}
QWEN_KEYS = {
    "do_convert_rgb",
    "do_normalize",
    "do_rescale",
    "do_resize",
    "image_mean",
    "image_std",
    "resample",
    "rescale_factor",
    "size",
    "min_pixels",
    "max_pixels",
    "patch_size",
    "temporal_patch_size",
    "merge_size",
    "image_processor_type",
    "processor_class",
}
QWEN_SIZE = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}  # transformers' default (min, max pixels)


def force_size(image, size: tuple[int, int]):
    """``image`` (PIL, or a uint8 [H, W(, C)] array) as an RGB PIL image resized with PIL bicubic to exactly
    ``size`` (height, width); transparency composited on white first, as transformers converts to RGB."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise TypeError(f"cannot force the size of a {type(image).__name__} (PIL images or uint8 arrays)")
        image = Image.fromarray(array)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    height, width = (int(v) for v in size)
    return rgb.resize((width, height), resample=BICUBIC)


def patchify(image: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
    """[C, H, W] -> [grid_h * grid_w, C * temporal * patch * patch] float32 in processor order (merge units
    in raster order, their merge x merge patches consecutive), every patch repeated over the temporal axis."""
    image = np.asarray(image, dtype=np.float32)
    channel, height, width = image.shape
    unit = patch_size * merge_size
    if height % unit or width % unit:
        raise ValueError(f"image of {height}x{width} is not a grid of {unit}-pixel merge units")
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = image.reshape(
        channel, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size
    ).transpose(1, 4, 2, 5, 0, 3, 6)
    patches = np.broadcast_to(
        patches[:, :, :, :, :, None], (*patches.shape[:5], temporal_patch_size, *patches.shape[5:])
    )
    return patches.reshape(grid_h * grid_w, channel * temporal_patch_size * patch_size * patch_size)


class QwenVLImageProcessor(ClipImageProcessor):
    """Qwen2-VL / Qwen2.5-VL preprocessing of PIL images, as transformers' ``Qwen2VLImageProcessorPil``
    computes it, bit for bit: RGB, PIL resize to ``smart_resize``'s size, rescale, normalize, patchify.

    ``min_pixels`` / ``max_pixels`` are ``size["shortest_edge"]`` / ``size["longest_edge"]`` (legacy
    top-level ``min_pixels`` / ``max_pixels`` keys override them, as in transformers).
    """

    _types = QWEN_TYPES
    _keys = QWEN_KEYS

    def __init__(self, config: dict, fallback_dir: Path | None = None):
        from tpc.models.qwen_geometry import smart_resize

        self._smart_resize = smart_resize
        unknown = sorted(set(config) - self._keys)
        if unknown:
            raise UnsupportedProcessor(f"image processor keys {unknown}")
        if config.get("image_processor_type") not in self._types:
            raise UnsupportedProcessor(f"image processor {config.get('image_processor_type')!r}")
        if not config.get("do_convert_rgb", True):
            raise UnsupportedProcessor("do_convert_rgb false")
        self.config = dict(config)
        size = config.get("size")
        size = dict(QWEN_SIZE) if size is None else dict(size) if isinstance(size, dict) else size
        if not isinstance(size, dict):
            raise UnsupportedProcessor(f"size {size!r}")
        for legacy, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if config.get(legacy) is not None:
                size[key] = config[legacy]
                size.pop(legacy, None)
        if set(size) != {"shortest_edge", "longest_edge"} or not all(
            isinstance(v, int) and v > 0 for v in size.values()
        ):
            raise UnsupportedProcessor(f"size {size!r} (handled: shortest_edge and longest_edge, in pixels)")
        self.size = size
        self.min_pixels, self.max_pixels = int(size["shortest_edge"]), int(size["longest_edge"])
        self.do_resize = bool(config.get("do_resize", True))
        self.do_center_crop = False
        self.crop_size = None
        self.read_pixel_steps(config)
        for name, default in (("patch_size", 14), ("temporal_patch_size", 2), ("merge_size", 2)):
            value = config.get(name, default)
            if not isinstance(value, int) or value < 1:
                raise UnsupportedProcessor(f"{name} {value!r}")
            setattr(self, name, value)
        self.geometry = {
            "patch_size": self.patch_size,
            "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
        }
        self._fallback_dir = fallback_dir
        self._fallback = None

    def to_dict(self) -> dict:
        return dict(self.config)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the image is resized to (``smart_resize``)."""
        factor = self.patch_size * self.merge_size
        return self._smart_resize(height, width, factor, self.min_pixels, self.max_pixels)

    def grid_of(self, image_hw) -> tuple[int, int]:
        """(grid_h, grid_w) in patches of an image of ``image_hw`` (height, width) pixels."""
        height, width = (int(v) for v in image_hw)
        if self.do_resize:
            height, width = self.output_size(height, width)
        return height // self.patch_size, width // self.patch_size

    def image_token_count(self, image_hw) -> int:
        """The ``<|image_pad|>`` placeholders the processor writes for an image of ``image_hw``."""
        grid_h, grid_w = self.grid_of(image_hw)
        return grid_h * grid_w // self.merge_size**2

    def patches(self, image) -> tuple[np.ndarray, tuple[int, int]]:
        """One PIL image: its flattened patches [grid_h * grid_w, 3 * temporal * patch**2] and its grid."""
        array = self.finish(self.to_rgb(image))
        flat = patchify(array, self.patch_size, self.merge_size, self.temporal_patch_size)
        return flat, (array.shape[1] // self.patch_size, array.shape[2] // self.patch_size)

    def preprocess_grid(self, images, sizes=None) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Each image's patches ``[L_i, 3 * temporal * patch**2]`` float32 and its ``(grid_h, grid_w)``.

        ``sizes``: per image a ``(height, width)`` to resize it to first (PIL bicubic), or None; the size
        must be one ``smart_resize`` keeps (multiples of patch * merge within min/max pixels).
        """
        from PIL import Image

        images = list(images) if isinstance(images, (list, tuple)) else [images]
        images = _forced(images, sizes, self.output_size if self.do_resize else None)
        if not all(isinstance(i, Image.Image) for i in images):
            out = self._transformers()(images, return_tensors=None)
            return _split(out["pixel_values"], out["image_grid_thw"])
        results = [self.patches(i) for i in images]
        return [r[0] for r in results], [r[1] for r in results]

    def __call__(self, images, return_tensors: str | None = "np") -> dict:
        """What transformers returns: ``pixel_values`` [sum L_i, 3 * temporal * patch**2] float32 and
        ``image_grid_thw`` [n, 3] int64 (t = 1 for images)."""
        from PIL import Image

        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if not all(isinstance(i, Image.Image) for i in images):
            return self._transformers()(images, return_tensors=return_tensors)
        pixels, grids = self.preprocess_grid(images)
        return {
            "pixel_values": np.concatenate(pixels, axis=0),
            "image_grid_thw": np.array([[1, h, w] for h, w in grids], dtype=np.int64),
        }

    _transformers = LlavaOnevisionImageProcessor._transformers  # AutoImageProcessor (PIL backend), no torchvision


def _forced(images: list, sizes, output_size) -> list:
    """``images`` with those that ``sizes`` names resized to their size (checked to be a fixed point of
    ``output_size``: the processor's own resize then keeps it)."""
    if sizes is None:
        return images
    sizes = list(sizes)
    if len(sizes) != len(images):
        raise ValueError(f"{len(images)} images but {len(sizes)} sizes")
    out = []
    for image, size in zip(images, sizes, strict=True):
        if size is not None:
            size = (int(size[0]), int(size[1]))
            if output_size is not None and tuple(output_size(*size)) != size:
                raise ValueError(f"size {size} is not one the processor keeps (it resizes it to {output_size(*size)})")
            image = force_size(image, size)
        out.append(image)
    return out


def _split(pixel_values, image_grid_thw) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """transformers' concatenated patches, cut per image by its grid."""
    pixel_values = np.asarray(pixel_values, dtype=np.float32)
    grids = [tuple(int(v) for v in g) for g in np.asarray(image_grid_thw)]
    pieces, start = [], 0
    for t, h, w in grids:
        pieces.append(pixel_values[start : start + t * h * w])
        start += t * h * w
    return pieces, [(h, w) for _, h, w in grids]


def _qwen(image_config, directory, processor_config):
    return QwenVLImageProcessor(image_config, directory)


# processor_class -> (the image processor types it may hold, None: the image processor checks its own type;
#                     how to build the light image processor from its config and processor_config.json)
IMAGE_PROCESSORS = {
    "LlavaProcessor": (None, _clip),
    "LlavaNextProcessor": (NEXT_TYPES, _next),
    "LlavaOnevisionProcessor": (ONEVISION_TYPES, _onevision),
    "Qwen2_5_VLProcessor": (QWEN_TYPES, _qwen),
    "Qwen2VLProcessor": (QWEN_TYPES, _qwen),
}
