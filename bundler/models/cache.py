"""Fingerprints of what produces a model's artifacts, and the folder that keeps them.

A fingerprint hashes the source's bytes, the options that shape the output and the versions
of the tools that write it; it never looks at output mtimes. An entry that fails its own
checks is a miss, so a damaged cache means a rebuild, never a failed build.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundler import __version__
from bundler.errors import ToolError
from bundler.manifest import ModelConfig
from bundler.models import remote, sources
from bundler.models.artifacts import MODEL_JSON, content_hash
from bundler.models.remote import RemoteCache, Unavailable

log = logging.getLogger(__name__)

ENTRY_FILE = "entry.json"
VERIFY_FILE = "verify.npz"
DERIVED_INDEX = "index.json"  # in a derived entry's folder: file name → sha256
_TOOLS = ("tensorflow", "tensorflowjs", "keras", "tf-keras")
_CHUNK = 1 << 20
# Bump when what an entry holds changes (its layout, the verification inputs): old entries
# then simply miss, instead of being read as damaged or, worse, reused. 3: no "hash" in
# the meta (the folder name comes from content_hash) and no derived sizes. 4: graph nodes
# without TensorFlow's internal attributes (pack.without_internal_attrs). 5: inputs that fit
# the model (models/samples.py) or the user's samples; metrics per runtime, not one error.
ENTRY_FORMAT = 5


def tool_versions() -> dict[str, str]:
    """Versions of the converting tools, read from package metadata (no import)."""
    found = {}
    for name in _TOOLS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def source_files(model: ModelConfig) -> list[Path]:
    """Every file whose bytes make up the model's source."""
    path = model.input.path
    if path.is_dir():
        # Dot-files (.DS_Store, editors' files) are never part of a model.
        return sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    if model.input.kind in (sources.TFJS_GRAPH, sources.TFJS_LAYERS):
        files = [path]
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            for group in doc.get("weightsManifest", []):
                files += [path.parent / p for p in group.get("paths", [])]
        except (OSError, ValueError, AttributeError):
            pass  # conversion reports the problem with its own words
        return files
    return [path]


def fingerprint(model: ModelConfig, options: Mapping[str, Any]) -> str:
    """The hex digest of everything that decides this model's artifacts."""
    h = hashlib.sha256()
    head = {
        "bundler": __version__,
        "entry_format": ENTRY_FORMAT,
        "tools": tool_versions(),
        "kind": model.input.kind,
        "format": model.format,
        "quantize": [[d, list(p)] for d, p in model.quantize.dtype_map],
        "quantize_auto": model.quantize.is_auto,
        "constraints": model.constraints.to_json(),
        "options": dict(options),
        "samples_limit": model.samples_limit,
        "input_shape": model.input_shape,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    if model.samples is not None:
        h.update(b"\0samples\0")
        _hash_file(h, model.samples)
    root = model.input.path if model.input.path.is_dir() else model.input.path.parent
    for file in source_files(model):
        h.update(b"\0file\0" + file.relative_to(root).as_posix().encode() + b"\0")
        _hash_file(h, file)
    return h.hexdigest()


def _hash_file(h: Any, file: Path) -> None:
    try:
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        h.update(b"\0missing\0")


def source_bytes(model: ModelConfig) -> int:
    """Bytes of the model's source files."""
    return sum(f.stat().st_size for f in source_files(model) if f.exists())


@dataclass(frozen=True)
class Entry:
    """A cached model: its files, its facts, and the verification data."""

    folder: Path
    meta: dict[str, Any]
    # The files' bytes, read once: `get` reads them all to check their hashes, and the
    # targets read the same files again (model.json several times per build).
    contents: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def files(self) -> dict[str, str]:
        """Artifact file name → sha256, model.json first, then by name."""
        files: dict[str, str] = self.meta["files"]
        return dict(sorted(files.items(), key=lambda item: (item[0] != MODEL_JSON, item[0])))

    @property
    def content_hash(self) -> str:
        """The hash of the files' bytes, which names the model's folders in the bundle."""
        return content_hash(self.meta["files"])

    @functools.cached_property
    def doc(self) -> dict[str, Any]:
        """model.json, parsed once: the runtime, verification and the targets all read it."""
        doc: dict[str, Any] = json.loads(self.read(MODEL_JSON))
        return doc

    def read(self, name: str) -> bytes:
        """The bytes of one artifact file (KeyError for a name the entry does not list)."""
        if name not in self.meta["files"]:
            raise KeyError(f"{name} is not a file of the cache entry {self.folder}")
        if name not in self.contents:
            self.contents[name] = (self.folder / name).read_bytes()
        return self.contents[name]

    def verify_data(
        self,
    ) -> tuple[list[tuple[str, np.ndarray[Any, Any]]], list[np.ndarray[Any, Any]]]:
        """The verification inputs (by name) and the reference outputs (may be empty)."""
        with np.load(self.folder / VERIFY_FILE, allow_pickle=False) as data:
            names = self.meta["verify_inputs"]
            inputs = [(n, data[f"input{i}"]) for i, n in enumerate(names)]
            outputs = [data[f"output{i}"] for i in range(self.meta["verify_outputs"])]
        return inputs, outputs

    def with_reference(self, reference: Sequence[np.ndarray[Any, Any]], source: str) -> Entry:
        """Keep the source model's outputs for the verification inputs, and what ran it (a
        tfjs source has no TensorFlow reference: a stock tfjs runtime measures it once)."""
        inputs, _ = self.verify_data()
        verify = _verify_npz(inputs, list(reference))
        meta = {
            **self.meta,
            "verify_outputs": len(reference),
            "verify_sha256": _sha256(verify),
            "reference_from": source,
        }
        return self._rewritten(meta, {VERIFY_FILE: verify})

    def with_errors(self, errors: Mapping[str, Any]) -> Entry:
        """Record verification results (runtime id → Metrics.to_json()) in the entry."""
        meta = {**self.meta, "errors": {**self.meta.get("errors", {}), **errors}}
        return self._rewritten(meta, {})

    def _rewritten(self, meta: dict[str, Any], changed: Mapping[str, bytes]) -> Entry:
        """The entry with `meta` and the `changed` files, written as a new folder (the other
        files linked into it) that replaces this one whole: another build reading it sees the
        old entry or the new one. A folder that cannot be written keeps the change in memory."""
        changed = {**changed, ENTRY_FILE: _json_bytes(meta)}
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name[:8]}-", dir=self.folder.parent))
        try:
            for name in [*meta["files"], VERIFY_FILE]:
                if name not in changed:
                    os.link(self.folder / name, tmp / name)
            for name, data in changed.items():
                (tmp / name).write_bytes(data)
            _replace(tmp, self.folder)
        except OSError as err:
            log.debug("cannot update %s: %s", self.folder, err)  # another build replaced it
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Entry(self.folder, meta, self.contents)


class Cache:
    """The cache folder: `<cache_dir>/models/<fingerprint>/`, and the shared store behind it
    (models/remote.py) when the manifest names one: a local miss is fetched from it, and a new
    entry published to it. A store that cannot be read is left alone for the rest of the
    build, and one that cannot be written (read-only credentials) is only read; `warnings`
    then says so, and the build goes on making here what it could not fetch."""

    def __init__(
        self, root: Path, shared: RemoteCache | None = None, required: bool = False
    ) -> None:
        self.root = root
        self.shared = shared
        self.required = required  # a store that cannot be read is an error, not a warning
        self.unreadable: str | None = None
        self.unwritable: str | None = None
        self.fetched: set[str] = set()  # the entries this build took from the shared store
        self._lock = threading.Lock()
        self._uploads: ThreadPoolExecutor | None = None  # publishing, see _publish

    @property
    def warnings(self) -> list[str]:
        """What went wrong with the shared store in this build, once each."""
        return [w for w in (self.unreadable, self.unwritable) if w]

    def folder(self, key: str) -> Path:
        """Where the entry for a fingerprint lives."""
        return self.root / "models" / key

    def get(self, key: str) -> Entry | None:
        """The entry for a fingerprint, or None if absent or damaged (then it is removed)."""
        folder = self.folder(key)
        if not folder.is_dir():
            if not self._pull(remote.entry(key), folder):
                return None
            self.fetched.add(key)
        try:
            return _read_entry(folder)
        except _READ_ERRORS:
            pass  # perhaps another build replaced it as we read: once more
        try:
            return _read_entry(folder)
        except _READ_ERRORS as err:
            log.warning("cache entry %s is damaged (%s); converting again", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def put(
        self,
        key: str,
        files: Mapping[str, bytes],
        meta: Mapping[str, Any],
        verify_inputs: list[tuple[str, np.ndarray[Any, Any]]],
        reference: list[np.ndarray[Any, Any]],
    ) -> Entry:
        """Store an entry whole: written beside its place, then renamed into it."""
        verify = _verify_npz(verify_inputs, reference)
        full = {
            **meta,
            "files": {name: _sha256(data) for name, data in files.items()},
            "verify_inputs": [n for n, _ in verify_inputs],
            "verify_outputs": len(reference),
            "verify_sha256": _sha256(verify),
        }
        written = {**files, VERIFY_FILE: verify, ENTRY_FILE: _json_bytes(full)}
        _write_whole(self.folder(key), written, replace=True)
        self._publish(remote.entry(key), written)
        return Entry(self.folder(key), full, dict(files))

    def share(self, entry: Entry) -> None:
        """Publish an entry again after it changed here (verification results, a reference)."""
        if not self._reachable(writing=True):
            return
        try:
            contents = {
                **{name: entry.read(name) for name in entry.meta["files"]},
                ENTRY_FILE: _json_bytes(entry.meta),
                VERIFY_FILE: (entry.folder / VERIFY_FILE).read_bytes(),
            }
        except OSError as err:  # another build on this folder replaced it meanwhile
            log.debug("not sharing %s: %s", entry.folder, err)
            return
        self._publish(remote.entry(entry.folder.name), contents)

    def derived(
        self,
        space: str,
        key: str,
        names: Collection[str],
        make: Callable[[], Mapping[str, bytes]],
    ) -> dict[str, bytes]:
        """The files `names` a fixed step derives from inputs that hash to `key` (a tfjs
        runtime, a compressed form): kept in `<root>/<space>/<key>/`, fetched from the shared
        store when absent here, else made now by `make` and kept and published. A damaged copy,
        or one without all of `names`, is made again; a cache that cannot be written only costs
        time."""
        folder = self.root / space / key
        found = _read_derived(folder)
        if found is not None and set(found) == set(names):
            return found
        index = remote.derived(space, key)
        fetched = self._fetch(index)
        if fetched is not None and set(fetched) != set(names):
            fetched = None
        files = fetched if fetched is not None else dict(make())
        if found is not None:
            shutil.rmtree(folder, ignore_errors=True)
        try:
            index_file = json.dumps({n: _sha256(d) for n, d in files.items()}, sort_keys=True)
            _write_whole(folder, {**files, DERIVED_INDEX: index_file.encode()})
        except OSError as err:
            log.debug("cannot keep %s: %s", folder, err)  # only costs time
        if fetched is None:
            self._publish(index, files)
        return files

    def _publish(self, index: str, contents: Mapping[str, bytes]) -> None:
        """Upload an entry's files, then its index: in the background, one entry after
        another in the order asked (an entry published again after verification lands
        after its first version), while the build goes on; `finish` waits for them."""
        if not self._reachable(writing=True):
            return
        with self._lock:
            if self._uploads is None:
                self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
            self._uploads.submit(self._upload, index, dict(contents))

    def _upload(self, index: str, contents: Mapping[str, bytes]) -> None:
        if not self._reachable(writing=True):
            return
        assert self.shared is not None
        try:
            self.shared.publish(index, contents)
        except Unavailable as err:
            self._lost(err)
        except Exception:  # a bug of ours must not be lost in a background thread
            log.exception("publishing %s to the shared cache failed", index)

    def finish(self) -> None:
        """Wait for what is being published to the shared store (its failures then show in
        `warnings`)."""
        with self._lock:
            uploads, self._uploads = self._uploads, None
        if uploads is not None:
            uploads.shutdown(wait=True)

    def _pull(self, index: str, final: Path) -> bool:
        """Fetch the entry the store lists at `index` into the folder `final`, whole or not at
        all; True when it is there now."""
        files = self._fetch(index)
        if files is None:
            return False
        try:
            _write_whole(final, files)
        except OSError as err:
            log.debug("cannot keep %s: %s", final, err)  # only costs time
        return final.is_dir()

    def _fetch(self, index: str) -> dict[str, bytes] | None:
        """The files the store lists at `index`, or None (absent, damaged, unreachable)."""
        if not self._reachable():
            return None
        assert self.shared is not None
        try:
            return self.shared.fetch(index)
        except Unavailable as err:
            self._lost(err)
            return None

    def _reachable(self, writing: bool = False) -> bool:
        if self.shared is None or self.unreadable is not None:
            return False
        return not writing or self.unwritable is None

    def _lost(self, err: Unavailable) -> None:
        assert self.shared is not None
        url = self.shared.url
        if self.required and not err.writing:
            raise ToolError(
                f"the shared cache {url} could not be read ({err}), and --require-cache "
                "forbids building without it; check AWS_ENDPOINT_URL and the credentials, or "
                "build without --require-cache"
            )
        with self._lock:  # the web target's threads may all lose it at once: said once
            if err.writing and self.unwritable is None:
                said = self.unwritable = (
                    f"the shared cache {url} could not be written ({err}); what this build "
                    f"made is kept in {self.root} only"
                )
            elif not err.writing and self.unreadable is None:
                said = self.unreadable = (
                    f"the shared cache {url} could not be read ({err}); this build made here "
                    f"what it could not fetch, and keeps it in {self.root}"
                )
            else:
                return
        log.warning("%s", said)


def open_cache(config: Any) -> Cache:
    """The build's cache: `cache_dir`, with the shared store behind it when one is named."""
    url = config.project.remote_cache
    shared = RemoteCache(url) if url else None
    return Cache(config.project.cache_dir, shared, config.project.require_cache)


_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError)


def _read_entry(folder: Path) -> Entry:
    """A model entry, its files checked against their hashes; one of _READ_ERRORS if not."""
    meta = json.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
    if not all(map(remote.FILE_NAME.match, meta["files"])):
        raise ValueError("a file name is not a plain name")
    contents = {}
    for name, digest in meta["files"].items():
        contents[name] = (folder / name).read_bytes()
        if _sha256(contents[name]) != digest:
            raise ValueError(f"{name} does not match its hash")
    if _sha256((folder / VERIFY_FILE).read_bytes()) != meta["verify_sha256"]:
        raise ValueError(f"{VERIFY_FILE} does not match its hash")
    entry = Entry(folder, meta, contents)
    if MODEL_JSON in contents:
        groups = entry.doc.get("weightsManifest", [])
        if not {p for g in groups for p in g["paths"]} <= set(contents):
            raise ValueError(f"{MODEL_JSON} names a weight file the entry lacks")
    return entry


def _read_derived(folder: Path) -> dict[str, bytes] | None:
    """A derived entry's files, or None when absent or damaged (then it is removed)."""
    if not folder.is_dir():
        return None
    try:
        index = json.loads((folder / DERIVED_INDEX).read_bytes())
        files = {name: (folder / name).read_bytes() for name in index}
        if any(_sha256(data) != index[name] for name, data in files.items()):
            raise ValueError("a file does not match its hash")
    except (OSError, ValueError, TypeError, AttributeError) as err:
        log.warning("cache entry %s is damaged (%s); making it again", folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return files


def _replace(tmp: Path, final: Path) -> None:
    """Move the folder `tmp` into `final`'s place, replacing what is there: the old folder is
    first renamed aside, so a build reading it meanwhile sees it whole or not at all."""
    try:
        os.replace(tmp, final)
        return
    except OSError:
        if not final.exists():
            raise
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name[:8]}-old-", dir=final.parent))
    try:
        with contextlib.suppress(FileNotFoundError):  # another build removed it meanwhile
            os.replace(final, aside / "old")
        os.replace(tmp, final)
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _write_whole(folder: Path, files: Mapping[str, bytes], replace: bool = False) -> None:
    """Write a folder whole: beside its place, then renamed into it. A folder already there
    (another build put it first) is kept, or with `replace` replaced whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name[:8]}-", dir=folder.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if replace:
            _replace(tmp, folder)
        else:
            os.replace(tmp, folder)
    except OSError:
        if replace or not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verify_npz(
    inputs: Sequence[tuple[str, np.ndarray[Any, Any]]],
    reference: Sequence[np.ndarray[Any, Any]],
) -> bytes:
    """verify.npz's bytes: the verification inputs, and the reference outputs."""
    arrays = {f"input{i}": a for i, (_, a) in enumerate(inputs)}
    arrays.update({f"output{i}": a for i, a in enumerate(reference)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
