"""An artifact's saved LLaVA processor, loaded without transformers (tokenizers, jinja2, PIL, numpy).

``tpc run`` spends most of its start-up importing transformers to load the processor the
compiler saved (``ARTIFACT/processor/``, written by ``save_pretrained``). This module
reads the same files and reproduces what transformers 5 does with them, token for token
and pixel for pixel:

* the tokenizer: ``tokenizer.json`` through the ``tokenizers`` library, with the special
  tokens of ``tokenizer_config.json`` registered the way ``TokenizersBackend`` does (the
  BOS/EOS insertion comes from the post-processor in ``tokenizer.json``, as there);
* the chat template, rendered by jinja2 in the sandboxed environment transformers uses
  (``trim_blocks``, ``lstrip_blocks``, loop controls, ``raise_exception``, ``tojson``,
  ``{% generation %}``), with the named special tokens as template variables;
* CLIP image preprocessing as transformers' PIL backend runs it (the backend transformers
  picks without torchvision, and the one the presets build): convert to RGB
  (transparency composited on white), resize the shortest edge with the configured
  resample filter, center crop (zero-padded when too small), rescale, normalize;
* LLaVA-NeXT ("anyres") preprocessing as ``LlavaNextImageProcessorPil`` computes it, for a
  ``LlavaNextProcessor``: resize to fit the best of ``image_grid_pinpoints`` (aspect ratio kept),
  zero-pad to it, cut it into crops, put the whole image resized to the crop size first, and
  take every crop through the CLIP steps above. ``preprocess_anyres`` returns each image's
  crops unpadded, with the original sizes; ``geometry`` says what ``tpc.models.anyres`` needs;
* LLaVA-OneVision preprocessing as ``LlavaOnevisionImageProcessorPil`` computes it, for a
  ``LlavaOnevisionProcessor``: the same anyres crops, cut at the ``height x width`` size (no
  center crop), SigLIP's mean/std.

Anything it does not recognise (another tokenizer class, custom code, legacy token
files, another image processor, a size rule other than shortest edge or height/width)
raises ``UnsupportedProcessor``; ``load_processor`` then falls back to transformers'
``AutoProcessor`` and says why in a debug log, and where that fails for a family whose
processor transformers cannot load everywhere (LLaVA-OneVision's wants torchvision for its
video processor), to the family's processor built from transformers' parts
(``tpc.models.families``: ``processor_parts``). Inputs other than PIL images (arrays,
tensors) go to transformers' image processor, loaded on first use.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# tokenizer classes that load tokenizer.json as it is (model-specific classes rebuild the backend)
_GENERIC_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast"}
# named special tokens of transformers 5, in its order (SPECIAL_TOKENS_ATTRIBUTES)
_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# files that would make transformers tokenise differently from tokenizer.json + tokenizer_config.json
_LEGACY_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "config.json")
_CLIP_TYPES = {"CLIPImageProcessor", "CLIPImageProcessorPil"}
_CLIP_KEYS = {
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
_NEXT_TYPES = {"LlavaNextImageProcessor", "LlavaNextImageProcessorPil"}
_NEXT_KEYS = _CLIP_KEYS | {"image_grid_pinpoints", "aspect_ratio_setting"}
_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # transformers' default
_ONEVISION_TYPES = {"LlavaOnevisionImageProcessor", "LlavaOnevisionImageProcessorPil"}
# transformers' LlavaOnevisionImageProcessor defaults: every grid of 1..6 x 1..6 crops of 384 px
_ONEVISION_PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]
_OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_BICUBIC = 3
_BILINEAR = 2


class UnsupportedProcessor(Exception):
    """The light loader cannot guarantee transformers' exact behaviour for these files."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedProcessor(f"{path.name}: unreadable ({exc})") from None
    if not isinstance(value, dict):
        raise UnsupportedProcessor(f"{path.name}: not a JSON object")
    return value


# --------------------------------------------------------------------------- tokenizer


class Encoding:
    """What ``tokenizer(text)`` returns, as far as tpc reads it."""

    def __init__(self, input_ids: list[int]):
        self.input_ids = input_ids
        self.attention_mask = [1] * len(input_ids)

    def __getitem__(self, key: str):
        return getattr(self, key)


class LightTokenizer:
    """``tokenizer.json`` + ``tokenizer_config.json`` as transformers' ``TokenizersBackend`` loads them."""

    def __init__(self, backend, special_tokens: dict[str, str], extra_special_tokens: list[str], config: dict):
        self.backend = backend
        self.special_tokens_map = special_tokens  # named special tokens as strings (chat template variables)
        self.extra_special_tokens = extra_special_tokens
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._clean_up_bpe = bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"))
        self.padding_side = config.get("padding_side", "right")
        for name, value in special_tokens.items():
            setattr(self, name, value)

    @classmethod
    def from_dir(cls, directory: Path) -> LightTokenizer:
        from tokenizers import AddedToken, Tokenizer, processors

        tokenizer_file, config_file = directory / "tokenizer.json", directory / "tokenizer_config.json"
        if not tokenizer_file.is_file() or not config_file.is_file():
            raise UnsupportedProcessor("no tokenizer.json and tokenizer_config.json")
        for name in _LEGACY_TOKENIZER_FILES:
            if (directory / name).exists():
                raise UnsupportedProcessor(f"{name} is present (transformers merges it into the tokenizer)")
        config = _read_json(config_file)
        kind = config.get("tokenizer_class")
        if kind not in _GENERIC_TOKENIZERS:
            raise UnsupportedProcessor(f"tokenizer class {kind!r} (handled: {', '.join(sorted(_GENERIC_TOKENIZERS))})")
        if config.get("auto_map") or config.get("backend", "tokenizers") != "tokenizers":
            raise UnsupportedProcessor("custom tokenizer code or a non-tokenizers backend")
        if config.get("fix_mistral_regex"):
            raise UnsupportedProcessor("fix_mistral_regex rewrites the pre-tokenizer")
        model_specific = [
            key
            for key, value in config.items()
            if key.endswith("_token") and key not in _SPECIAL_ATTRIBUTES and isinstance(value, (str, dict))
        ]
        extras = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        if model_specific or isinstance(extras, dict):
            raise UnsupportedProcessor(f"model-specific special tokens {model_specific or list(extras)}")
        if not isinstance(extras, list):
            raise UnsupportedProcessor("extra_special_tokens is neither a list nor a dict")

        def added(value):  # AddedToken as tokenizer_config.json serialises it, or the string
            if isinstance(value, dict):
                fields = {k: v for k, v in value.items() if k != "__type"}
                if value.get("__type") != "AddedToken" or "content" not in fields:
                    raise UnsupportedProcessor(f"special token {value!r} is not an AddedToken")
                return AddedToken(**fields)
            if not isinstance(value, str):
                raise UnsupportedProcessor(f"special token {value!r} is not a string")
            return value

        backend = Tokenizer.from_file(str(tokenizer_file))
        padding = backend.padding
        backend.no_truncation()  # transformers turns both off for a call without max_length/padding
        backend.no_padding()

        # added tokens that named special tokens resolve to (keeping their flags)
        decoder_entries: list[tuple[int, Any]] = []
        if "added_tokens_decoder" in config:
            for index, entry in config["added_tokens_decoder"].items():
                if not isinstance(entry, dict):
                    raise UnsupportedProcessor("added_tokens_decoder entry is not an object")
                decoder_entries.append((int(index), AddedToken(**{k: v for k, v in entry.items() if k != "__type"})))
            by_content = {str(token): token for _, token in decoder_entries}
        else:
            with open(tokenizer_file, encoding="utf-8") as handle:
                serialized = json.load(handle).get("added_tokens") or []
            by_content = {
                entry["content"]: AddedToken(**{k: v for k, v in entry.items() if k != "id"}) for entry in serialized
            }
        named: dict[str, Any] = {}
        for name in _SPECIAL_ATTRIBUTES:
            value = config.get(name)
            if name == "pad_token" and name not in config and padding is not None:
                value = padding["pad_token"]  # transformers: kwargs.setdefault("pad_token", padding's)
            if value is not None:
                value = added(value)
                named[name] = by_content.get(str(value), value) if by_content else value
        extra_tokens = [added(value) for value in extras]

        # TokenizersBackend.__init__: add the saved added tokens, then any named/extra special token
        # the vocabulary does not hold yet, as special tokens
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        to_add = [token for _, token in sorted(decoder_entries, key=lambda item: item[0])]
        known = {str(token.content) for token in backend.get_added_tokens_decoder().values()}
        known |= {str(token) for token in to_add}
        for value in [*named.values(), *extra_tokens]:
            if str(value) not in known:
                to_add.append(value)
                known.add(str(value))
        if to_add:
            named_strings = {str(value) for value in named.values()}
            tokens = []
            for token in to_add:
                if isinstance(token, str):
                    token = AddedToken(token, special=True)
                elif not token.special and str(token) in named_strings:
                    token.special = True
                tokens.append(token)
            backend.add_tokens(tokens)
        if backend.post_processor is None:  # what update_post_processor() sets without add_bos/eos_token
            backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
        return cls(backend, {k: str(v) for k, v in named.items()}, [str(t) for t in extra_tokens], config)

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoding:
        return Encoding(self.encode(text, add_special_tokens))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in (token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids)]
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and (
            type(self.backend.model).__name__ != "BPE" or self._clean_up_bpe
        ):  # transformers skips the clean-up for BPE models unless told otherwise
            for before, after in (
                (" .", "."),
                (" ?", "?"),
                (" !", "!"),
                (" ,", ","),
                (" ' ", "'"),
                (" n't", "n't"),
                (" 'm", "'m"),
                (" 's", "'s"),
                (" 've", "'ve"),
                (" 're", "'re"),
            ):
                text = text.replace(before, after)
        return text

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.backend.token_to_id(tokens)
        return [self.backend.token_to_id(t) for t in tokens]

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)


# --------------------------------------------------------------------------- chat template


def compile_chat_template(source: str):
    """A jinja2 template compiled in the environment transformers renders chat templates in."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit()) < (3, 1, 6):
        raise UnsupportedProcessor(f"jinja2 {jinja2.__version__} < 3.1.6 (sandbox escapes)")

    class Generation(Extension):  # {% generation %}...{% endgeneration %}: the body, untouched
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        @jinja2.pass_eval_context
        def _render(self, context, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


def _plain(value):
    """What transformers lets a template see: JSON-like data, anything else as ``<TypeName>``."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _chat_template_source(directory: Path, processor_config: dict) -> str | None:
    """The processor's template, found where transformers' ``ProcessorMixin`` looks for it."""
    if (directory / "chat_templates").is_dir():
        raise UnsupportedProcessor("several chat templates (chat_templates/)")
    if processor_config.get("chat_template") is not None:
        source = processor_config["chat_template"]
    elif (directory / "chat_template.json").is_file():
        source = _read_json(directory / "chat_template.json").get("chat_template")
    elif (directory / "chat_template.jinja").is_file():
        source = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    else:
        return None
    if isinstance(source, dict):
        if set(source) != {"default"}:
            raise UnsupportedProcessor("several chat templates")
        source = source["default"]
    if not isinstance(source, str):
        raise UnsupportedProcessor("chat template is not a string")
    return source


# --------------------------------------------------------------------------- images


class ClipImageProcessor:
    """CLIP preprocessing of PIL images, as transformers' ``CLIPImageProcessorPil`` computes it."""

    _types = _CLIP_TYPES
    _keys = _CLIP_KEYS
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
        self.resample = config.get("resample", _BICUBIC)
        if self.resample is None:
            self.resample = _BILINEAR
        if not isinstance(self.resample, int) or not 0 <= self.resample <= 5:
            raise UnsupportedProcessor(f"resample {self.resample!r}")
        self.do_center_crop = bool(config.get("do_center_crop", True))
        self.crop_size = config.get("crop_size", {"height": 224, "width": 224})
        if not isinstance(self.crop_size, dict) or set(self.crop_size) != {"height", "width"}:
            raise UnsupportedProcessor(f"crop_size {self.crop_size!r}")
        self.do_rescale = bool(config.get("do_rescale", True))
        self.rescale_factor = config.get("rescale_factor", 1 / 255)
        self.do_normalize = bool(config.get("do_normalize", True))
        self.image_mean = config.get("image_mean", _OPENAI_CLIP_MEAN)
        self.image_std = config.get("image_std", _OPENAI_CLIP_STD)
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                setattr(self, name, [value] * 3)
            elif not (isinstance(value, list) and len(value) == 3):
                raise UnsupportedProcessor(f"{name} {value!r}")
        self._fallback_dir = fallback_dir
        self._fallback = None

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


class LlavaNextImageProcessor(ClipImageProcessor):
    """LLaVA-NeXT anyres preprocessing of PIL images, as transformers' ``LlavaNextImageProcessorPil`` computes it.

    ``patch_size`` (the processor's, from ``processor_config.json``) gives ``geometry``'s tokens per side.
    """

    _types = _NEXT_TYPES
    _keys = _NEXT_KEYS
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
            self.pinpoints = check_pinpoints(config.get("image_grid_pinpoints", _NEXT_PINPOINTS), self.crop)
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

    _types = _ONEVISION_TYPES

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
        config.setdefault("resample", _BICUBIC)
        ClipImageProcessor.__init__(self, config, fallback_dir)
        self.do_pad = bool(config.get("do_pad", True))  # across images, in __call__ only
        self.crop = int(size["height"])
        self.base_size = (int(size["height"]), int(size["width"]))
        try:
            self.pinpoints = check_pinpoints(config.get("image_grid_pinpoints", _ONEVISION_PINPOINTS), self.crop)
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


# --------------------------------------------------------------------------- processor

# processor_class -> the image processor types it may hold
_PROCESSORS = {
    "LlavaProcessor": _CLIP_TYPES,
    "LlavaNextProcessor": _NEXT_TYPES,
    "LlavaOnevisionProcessor": _ONEVISION_TYPES,
}


class LightProcessor:
    """What ``PromptEncoder`` uses of a ``LlavaProcessor``, ``LlavaNextProcessor`` or ``LlavaOnevisionProcessor``:
    tokenizer, chat template, image processor (an anyres one, with ``preprocess_anyres``, for the latter two)."""

    def __init__(self, tokenizer: LightTokenizer, image_processor: ClipImageProcessor, chat_template: str | None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self._compiled = compile_chat_template(chat_template) if chat_template else None

    @classmethod
    def from_dir(cls, directory: str | Path) -> LightProcessor:
        directory = Path(directory)
        config_file = directory / "processor_config.json"
        processor_config = _read_json(config_file) if config_file.is_file() else {}
        kind = processor_config.get("processor_class")
        if kind not in _PROCESSORS or processor_config.get("auto_map"):
            raise UnsupportedProcessor(f"processor class {kind!r} (handled: {', '.join(_PROCESSORS)})")
        image_config = processor_config.get("image_processor")
        if (directory / "preprocessor_config.json").is_file():
            if image_config is not None:
                raise UnsupportedProcessor("image processor in both processor_config.json and preprocessor_config.json")
            image_config = _read_json(directory / "preprocessor_config.json")
        if not isinstance(image_config, dict):
            raise UnsupportedProcessor("no image processor configuration")
        image_kind = image_config.get("image_processor_type")
        if kind != "LlavaProcessor":  # the anyres processors (CLIP's image processor checks its own type)
            if image_kind not in _PROCESSORS[kind]:
                raise UnsupportedProcessor(f"processor class {kind!r} with image processor {image_kind!r}")
            if processor_config.get("image_token", "<image>") != "<image>":
                raise UnsupportedProcessor(f"image_token {processor_config['image_token']!r}")
        if kind == "LlavaOnevisionProcessor":
            image_processor = LlavaOnevisionImageProcessor(
                image_config,
                directory,
                num_image_tokens=processor_config.get("num_image_tokens"),
                vision_feature_select_strategy=processor_config.get("vision_feature_select_strategy"),
                vision_aspect_ratio=processor_config.get("vision_aspect_ratio"),
            )
        elif kind == "LlavaNextProcessor":
            image_processor = LlavaNextImageProcessor(
                image_config,
                directory,
                patch_size=processor_config.get("patch_size"),
                num_additional_image_tokens=processor_config.get("num_additional_image_tokens", 0),
                vision_feature_select_strategy=processor_config.get("vision_feature_select_strategy"),
            )
        else:
            image_processor = ClipImageProcessor(image_config, directory)
        tokenizer = LightTokenizer.from_dir(directory)
        return cls(tokenizer, image_processor, _chat_template_source(directory, processor_config))

    def apply_chat_template(
        self, conversation: list[dict], add_generation_prompt: bool = False, tokenize: bool = False
    ):
        if tokenize:
            raise NotImplementedError("the light processor renders text only (tokenize=False)")
        if self._compiled is None:
            raise ValueError("Cannot use apply_chat_template because this processor does not have a chat template.")
        messages = _plain([{k: v for k, v in m.items() if v is not None} for m in conversation])
        variables = _plain(dict(self.tokenizer.special_tokens_map))
        return self._compiled.render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables
        )


def load_processor(directory: str | Path):
    """The light processor when it handles these files, else transformers' ``AutoProcessor`` (logged), else,
    for a family that builds its processor from parts (LLaVA-OneVision without torchvision), those parts."""
    try:
        return LightProcessor.from_dir(directory)
    except UnsupportedProcessor as exc:
        log.debug(
            "processor %s: loading it with transformers (the light loader does not handle it: %s)", directory, exc
        )
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(directory))
    except Exception as exc:
        parts = _parts_loader(Path(directory))
        if parts is None:
            raise
        log.debug("processor %s: AutoProcessor failed (%s); building it from its parts", directory, exc)
        return parts(str(directory))


def _parts_loader(directory: Path):
    """The parts loader of the family whose processor ``processor_config.json`` names, or None."""
    from tpc.models.families import family_for_processor

    config_file = directory / "processor_config.json"
    try:
        kind = json.loads(config_file.read_text(encoding="utf-8")).get("processor_class")
    except (OSError, ValueError, AttributeError):
        return None
    family = family_for_processor(kind)
    return None if family is None else family.parts_loader()
