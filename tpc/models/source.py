"""What a model argument names, decided without loading anything (torch-free, no network).

* a preset name (``tpc presets``);
* a local checkpoint directory: anything that exists, or that looks like a path
  (starts with ``/``, ``./``, ``../`` or ``~``, ends with a separator, has more than one
  ``/``, or whose first component is an existing local directory);
* otherwise a hub id ``owner/name``.

A path-like argument that does not exist is reported at once as a missing local
directory: it is never tried on the hub.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tpc.errors import ModelLoadError, UsageError
from tpc.models.presets import PRESETS

OFFLINE_HINT = (
    "pass a local directory written by save_pretrained (config.json, *.safetensors, "
    "tokenizer and processor files) or a built-in preset: "
    + ", ".join(name for name, p in PRESETS.items() if p.builtin)
)
_HUB_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "preset", "local" or "hub"
    location: str  # preset name, absolute directory, or hub id


def looks_like_path(arg: str) -> bool:
    if arg.startswith(("/", "./", "../", "~", ".\\")) or arg in (".", ".."):
        return True
    if arg.endswith(("/", os.sep)) or arg.count("/") > 1 or "\\" in arg:
        return True
    first = arg.split("/", 1)[0]
    return "/" in arg and Path(first).expanduser().is_dir()


def looks_like_hub_id(arg: str) -> bool:
    parts = arg.split("/")
    return len(parts) == 2 and all(_HUB_PART.match(p) for p in parts) and ".." not in arg


def resolve_model_arg(arg: str) -> ModelSource:
    """Classify ``arg``; a missing local path or a malformed name is a one-line error."""
    if arg in PRESETS:
        return ModelSource("preset", arg)
    path = Path(arg).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{arg}: not a checkpoint directory (no config.json); pass a directory written by "
                "save_pretrained or a preset (see `tpc presets`)"
            )
        return ModelSource("local", str(path.resolve()))
    if looks_like_path(arg):
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        where = f" (the nearest existing folder is {parent})" if parent is not None else ""
        raise UsageError(f"model {arg}: no such local directory{where}")
    if looks_like_hub_id(arg):
        return ModelSource("hub", arg)
    raise UsageError(
        f"unknown model {arg!r}: not a preset ({', '.join(PRESETS)}), an existing directory, "
        "or a hub id of the form owner/name"
    )


def hub_location(hub_id: str, local_hint: bool = False) -> str:
    """``hub_id`` if the hub is reachable or the checkpoint is in the local hub cache; else one error line.

    One short TCP probe replaces huggingface_hub's retries (tens of seconds of warnings when
    offline); with HF_HUB_OFFLINE=1 only the local cache is consulted.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    reason = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable()
    if reason is None:
        return hub_id
    if _in_hub_cache(hub_id):
        return hub_id
    also = f" and no local directory {hub_id!r} exists" if local_hint else ""
    raise ModelLoadError(f"cannot fetch {hub_id!r} from the model hub ({reason}){also}; {OFFLINE_HINT}")


def _in_hub_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(hub_id, "config.json")
    return isinstance(found, str)


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the hub's host accepts a TCP connection within ``timeout`` seconds, else why not."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} unreachable: {exc.strerror or type(exc).__name__}"
    return None


def check_model_arg(arg: str) -> ModelSource:
    """``resolve_model_arg`` plus, for a hub id or hub preset, a fast check that it can be fetched."""
    source = resolve_model_arg(arg)
    if source.kind == "hub":
        hub_location(arg, local_hint=True)
    elif source.kind == "preset" and not PRESETS[arg].builtin:
        hub_location(PRESETS[arg].hub_id)
    return source
