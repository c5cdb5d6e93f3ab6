"""Where tpc writes: checked before the work starts, so a bad path costs one line, not a traceback.

Every command that writes a file or a directory checks it with ``check_writable`` (the
``OutputPath`` click type does so while parsing arguments): the path must not be an
existing directory where a file is expected, and the nearest existing ancestor must
be a directory we can create entries in. The check is a real probe (a temporary file
created and removed), so read-only mounts, pseudo file systems such as /proc and
permission bits all fail here, with ``error: cannot write PATH (reason)`` and exit 2.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from tpc.errors import UsageError


def _fail(path: Path, reason: str) -> UsageError:
    return UsageError(f"cannot write {path} ({reason})")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or type(exc).__name__


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def probe_directory(directory: Path, target: Path) -> None:
    """Create and remove a temporary file in ``directory``; UsageError naming ``target`` if that fails."""
    if not directory.is_dir():
        raise _fail(target, f"{directory} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".tpc-write-check-", dir=directory)
    except OSError as exc:
        raise _fail(target, f"cannot create files in {directory}: {_reason(exc)}") from None
    os.close(fd)
    os.unlink(name)


def check_writable(path: str | Path, kind: str = "file") -> Path:
    """Raise a one-line UsageError unless ``path`` (a ``file`` or a ``directory``) can be written."""
    path = Path(path).expanduser()
    if kind == "file" and path.is_dir():
        raise _fail(path, "it is a directory")
    if kind == "directory" and path.exists() and not path.is_dir():
        raise _fail(path, "it exists and is not a directory")
    if path.exists():
        if kind == "file" and not os.access(path, os.W_OK):
            raise _fail(path, "permission denied or read-only")
        probe_directory(path if kind == "directory" else path.parent, path)
    else:
        probe_directory(nearest_existing(path), path)
    return path


def write_text(path: str | Path, text: str, append: bool = False) -> None:
    """Write ``text`` to ``path`` (parents created); an OSError becomes a one-line UsageError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a" if append else "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise _fail(path, _reason(exc)) from None


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; missing, unreadable or binary files are one-line UsageErrors."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path}: is a directory, expected a file") from None
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read it ({_reason(exc)})") from None
    if b"\0" in data[:8192]:
        raise UsageError(f"{what} {path}: a binary file, expected text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path}: not UTF-8 text") from None


MANIFEST_NAME = "manifest.json"  # the file that marks a tpc artifact (tpc.manifest writes it)


def check_artifact_output(output: Path, force: bool) -> None:
    """An artifact directory may be created, or replace an empty one or (with ``--force``) an artifact.

    Anything else already at ``output`` is the user's and is never touched: a file, or a
    directory with other contents, is refused even with ``--force``.
    """
    output = Path(output).expanduser()
    if output.exists() or output.is_symlink():
        if not output.is_dir():
            raise UsageError(f"{output} exists and is not a directory; choose another -o")
        entries = list(output.iterdir())
        if entries and not (output / MANIFEST_NAME).is_file():
            raise UsageError(
                f"{output} is not empty and is not a tpc artifact (no {MANIFEST_NAME}); tpc replaces only its own "
                "artifacts, even with --force: choose another -o or empty it yourself"
            )
        if entries and not force:
            raise UsageError(f"{output} already exists; pass --force to replace it")
    # the artifact is built in a sibling directory and renamed into place
    probe_directory(nearest_existing(output.absolute().parent), output)


def user_mode(directory: bool = True) -> int:
    """The permission bits a new directory (or file) gets under the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask
