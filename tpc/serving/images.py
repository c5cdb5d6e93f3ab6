"""A request's image: a base64 ``data:`` URL, or a file inside the operator's ``--allow-local-dir``.

Remote (``http(s)://``) URLs are never fetched. The encoded size and the pixel count are
checked before the picture is decoded (413 over a limit); what PIL cannot decode is a 400.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

from tpc.serving.errors import ApiError, invalid

PARAM = "messages[0].content.image_url"


def open_image_url(url: str, max_bytes: int, max_pixels: int, allow_local_dir: Path | None):
    """The picture as an RGB PIL image, or an ``ApiError``."""
    if url.startswith("data:"):
        data = decode_data_url(url, max_bytes)
    elif url.startswith(("http://", "https://")):
        raise bad_image("remote image URLs are not fetched; send the image as a base64 data: URL")
    elif allow_local_dir is not None:
        data = read_local(url, allow_local_dir, max_bytes)
    else:
        raise bad_image(
            "image_url must be a base64 data: URL (data:image/png;base64,...); local paths need the server's "
            "--allow-local-dir"
        )
    return decode_image(data, max_pixels)


def decode_data_url(url: str, max_bytes: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise bad_image("the data: URL has no ',' before its data")
    fields = header[len("data:") :].split(";")
    media = fields[0].strip().lower()
    if not media.startswith("image/"):
        raise bad_image(f"the data: URL holds {media or 'no media type'!r}, not an image")
    if "base64" not in fields[1:]:
        raise bad_image("the image data: URL must be base64 (data:image/...;base64,...)")
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise too_large(f"the image is about {len(payload) * 3 // 4} bytes, over the server's limit of {max_bytes}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_image("the data: URL is not valid base64") from None
    if len(data) > max_bytes:
        raise too_large(f"the image is {len(data)} bytes, over the server's limit of {max_bytes}")
    return data


def read_local(url: str, allow_local_dir: Path, max_bytes: int) -> bytes:
    text = url[len("file://") :] if url.startswith("file://") else url
    path = Path(text)
    if not path.is_absolute():
        raise bad_image("a local image path must be absolute (file:///... or /...)")
    root = Path(allow_local_dir).resolve()
    resolved = path.resolve()  # symbolic links resolved: a link out of the directory is outside it
    if not resolved.is_relative_to(root):
        raise ApiError(403, "the image path is outside the directory this server may read", "permission_error", PARAM)
    if not resolved.is_file():
        raise bad_image(f"image {text}: no such file")
    size = resolved.stat().st_size
    if size > max_bytes:
        raise too_large(f"the image is {size} bytes, over the server's limit of {max_bytes}")
    try:
        return resolved.read_bytes()
    except OSError as exc:
        raise bad_image(f"image {text}: cannot read it ({exc.strerror})") from None


def decode_image(data: bytes, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise too_large(f"the image is {width}x{height} pixels, over the server's limit of {max_pixels}")
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise bad_image(f"the image cannot be decoded ({type(exc).__name__})") from None


def too_large(message: str) -> ApiError:
    return ApiError(413, message, param=PARAM, code="image_too_large")


def bad_image(message: str) -> ApiError:
    return invalid(message, param=PARAM, code="invalid_image")
