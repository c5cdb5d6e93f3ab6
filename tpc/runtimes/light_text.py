"""Tokenizer and chat template of a saved processor, without transformers (tokenizers, jinja2).

The tokenizer: ``tokenizer.json`` through the ``tokenizers`` library, with the special tokens
of ``tokenizer_config.json`` registered the way ``TokenizersBackend`` does (BOS/EOS insertion
comes from the post-processor in ``tokenizer.json``, as there). The chat template: rendered by
jinja2 in the sandboxed environment transformers uses (``trim_blocks``, ``lstrip_blocks``, loop
controls, ``raise_exception``, ``tojson``, ``{% generation %}``), with the named special tokens
as template variables. Files it cannot reproduce exactly raise ``UnsupportedProcessor``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

# tokenizer classes that load tokenizer.json as it is (model-specific classes rebuild the backend)
_GENERIC_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast"}
# named special tokens of transformers 5, in its order (SPECIAL_TOKENS_ATTRIBUTES)
_SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# files that would make transformers tokenise differently from tokenizer.json + tokenizer_config.json
_LEGACY_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "config.json")


class UnsupportedProcessor(Exception):
    """The light loader cannot guarantee transformers' exact behaviour for these files."""


def read_json(path: Path) -> dict[str, Any]:
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
        config = read_json(config_file)
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


def plain(value):
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
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, np.generic):
        return plain(value.item())
    return f"<{type(value).__name__}>"


def chat_template_source(directory: Path, processor_config: dict) -> str | None:
    """The processor's template, found where transformers' ``ProcessorMixin`` looks for it."""
    if (directory / "chat_templates").is_dir():
        raise UnsupportedProcessor("several chat templates (chat_templates/)")
    if processor_config.get("chat_template") is not None:
        source = processor_config["chat_template"]
    elif (directory / "chat_template.json").is_file():
        source = read_json(directory / "chat_template.json").get("chat_template")
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
