"""The only writer of the output folder: a whole tree written beside it, then swapped in.

A rebuild replaces only what the build wrote. `OWNED` (at the top of `out`) lists the files of
the last build; any other file or folder under `out` (what WeChat DevTools writes, such as
`project.private.config.json`, or the user's own) is carried into the new tree by hard link,
untouched. An `out` without that record is an older bundle: all of it was the build's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bundler.errors import BundlerError

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
# The folders write_tree makes beside `out`: the new tree being written, and the old one
# moved out of the way where paths cannot be exchanged atomically.
_NEW = "new"
_OLD = "old"
OWNED = ".bundler-owned.json"


def owned(out: Path) -> set[str] | None:
    """The files the last build wrote to `out`, or None when it left no record."""
    try:
        data = json.loads((out / OWNED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return {str(p) for p in data["files"]} | {OWNED}


def foreign(out: Path) -> list[str]:
    """What under `out` the build did not write: files, links and empty folders, relative."""
    mine = owned(out)
    return [] if mine is None else _others(out, mine)


def _others(folder: Path, mine: set[str]) -> list[str]:
    """What under `folder` is not in `mine`: files, links and empty folders (ending in /)."""
    if not folder.is_dir():
        return []
    found = []
    for root, dirs, names in os.walk(folder):
        base = Path(root)
        for name in [*names, *(d for d in dirs if (base / d).is_symlink())]:
            rel = str((base / name).relative_to(folder))
            if rel not in mine:
                found.append(rel)
        if not dirs and not names and base != folder:
            found.append(str(base.relative_to(folder)) + "/")
    return sorted(found)


def unchanged(out: Path, files: Mapping[str, bytes]) -> bool:
    """True when `out` already holds exactly these files with these bytes, beside what is
    not the build's."""
    files = _with_record(files)
    return out.is_dir() and owned(out) == set(files) and holds(out, files)


def holds(folder: Path, files: Mapping[str, bytes]) -> bool:
    """True when every one of `files` is under `folder` with these bytes."""
    for rel, data in files.items():
        path = folder / rel
        try:
            if path.stat().st_size != len(data) or path.read_bytes() != data:
                return False
        except OSError:
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
    tmp = stage(out, _with_record(files), owned(out))
    try:
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def stage(target: Path, files: Mapping[str, bytes], mine: set[str] | None) -> Path:
    """A new tree beside `target`, for `swap_in`: `files`, and whatever under `target` is not
    in `mine` (the build's files there before; None: all of it was), carried over as it is."""
    for rel in files:
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise BundlerError(f"refusing to write {rel!r}: not a plain path inside {target}")
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target, _NEW), dir=target.parent))
    try:
        for rel, data in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for rel in [] if mine is None else _others(target, mine):
            _carry(target, tmp, rel, files)
        os.chmod(tmp, 0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _with_record(files: Mapping[str, bytes]) -> dict[str, bytes]:
    record = {
        "generator": "model bundler",
        "note": "The files the last build wrote; a rebuild replaces these and keeps the rest.",
        "files": sorted(files),
    }
    return {**files, OWNED: (json.dumps(record, indent=1) + "\n").encode("utf-8")}


def _carry(old: Path, new: Path, rel: str, files: Mapping[str, bytes]) -> None:
    """Put the user's `rel` (a file, a link, or an empty folder ending in /) from the tree
    `old` into the tree `new` as it is: a hard link, no copy."""
    if rel.rstrip("/") in files:
        log.warning("%s: the build now writes this file; the one there was replaced", old / rel)
        return
    source, target = old / rel, new / rel
    if rel.endswith("/"):
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_file(path: Path, data: bytes) -> None:
    """Write one file atomically: beside it first, then renamed over it (its mode kept)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swap_in(new: Path, out: Path) -> None:
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
