"""The only writer of the output folder: a whole tree written beside it, then swapped in."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# The folders write_tree makes beside `out`: the new tree being written, and the old one
# moved out of the way where paths cannot be exchanged atomically.
_NEW = "new"
_OLD = "old"


def unchanged(out: Path, files: Mapping[str, bytes]) -> bool:
    """True when `out` already holds exactly these files with these bytes."""
    if not out.is_dir():
        return False
    present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    if present != set(files):
        return False
    for rel, data in files.items():
        path = out / rel
        if path.stat().st_size != len(data) or path.read_bytes() != data:
            return False
    return True


def is_temporary(path: Path, out: Path) -> bool:
    """True when `path` is one of write_tree's temporary folders beside `out`, or inside one."""
    if path == out.parent or not path.is_relative_to(out.parent):
        return False
    first = path.relative_to(out.parent).parts[0]
    return first.startswith((_temporary_prefix(out, _NEW), _temporary_prefix(out, _OLD)))


def write_tree(out: Path, files: Mapping[str, bytes]) -> bool:
    """Make `out` hold exactly `files`; return False when it already did (nothing written).

    The new tree is written to a temporary folder beside `out` and swapped in with one
    rename, so a reader (WeChat DevTools, a web server) never sees a half-written bundle
    and a failure leaves the previous bundle as it was.
    """
    if unchanged(out, files):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(out, _NEW), dir=out.parent))
    try:
        for rel, data in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        os.chmod(tmp, 0o755)
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _swap_in(new: Path, out: Path) -> None:
    """Put `new` at `out`; afterwards `new` holds the old tree (or nothing)."""
    if not out.exists():
        os.replace(new, out)
        return
    if _exchange(new, out):
        return
    # No atomic exchange on this system: two renames, with a moment where `out` is absent.
    old = Path(tempfile.mkdtemp(prefix=_temporary_prefix(out, _OLD), dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old, out)
        raise
    os.replace(old, new)


def _temporary_prefix(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result != 0:
        log.debug("renameat2 failed (errno %d); falling back to two renames", ctypes.get_errno())
        return False
    return True
