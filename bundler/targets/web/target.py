"""The web target: a static site under `<out>/web/` that any static host serves as it is.

    web/index.html                           demo: loads each model, predicts once, shows times
    web/bundler/loader.js                    `import {loadModel} from './bundler/loader.js'`
    web/bundler/models.js                    this build's models (hashes, sizes, inputs)
    web/vendor/tfjs-<version>/<hash>/tf.min.js   the tfjs runtime built for these models: a
                                             script that sets `tf` (absent with tfjs_url)
    web/models/<name>/<hash>/model.json      + shards, from the build's cache entries

Every file gets a `.br` and a `.gz` beside it, for servers that send precompressed files
(nginx `brotli_static`/`gzip_static`, `bundler serve`). Every URL is relative, so the folder
works from any base path. Files under a content-hashed folder (`models/…/<hash>/`,
`vendor/…/<hash>/`, see `is_immutable`) never change and may be cached for good; the page and
bundler/ must be revalidated.

Compressing the runtime with brotli 11 takes a second, so the compressed forms of large files
are kept in the build cache (`<cache_dir>/compressed/`, and the shared store when the manifest
names one), by the sha256 of what they compress.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import brotli
import numpy as np

from bundler import limits
from bundler.manifest import Config
from bundler.models.artifacts import BROTLI_SUFFIX, HASH_LENGTH, ModelArtifacts
from bundler.models.cache import Cache
from bundler.models.exports import Export, jobs
from bundler.render import render
from bundler.report import model_folder
from bundler.runtimes import NpmSet, Runtimes
from bundler.targets import TargetOutput
from bundler.tfjs_runtime.build import Request

WEB_DIR = "web"
INDEX = "index.html"
LOADER = "bundler/loader.js"
MODELS_JS = "bundler/models.js"
VENDOR_DIR = "vendor"
TFJS_FILE = "tf.min.js"  # the runtime built for the bundle (bundler/tfjs_runtime/)
GZIP_SUFFIX = ".gz"
CACHE_SPACE = "compressed"  # <cache_dir>/compressed/<sha256 of the input>.<form>/
# Threads that compress, when a shared store is behind the cache: most of their time is then
# spent waiting for its answers.
FETCH_THREADS = 8
COMPRESSED_SUFFIXES = (BROTLI_SUFFIX, GZIP_SUFFIX)
# A content-hashed folder: what is inside never changes under the same URL.
IMMUTABLE = re.compile(r"(?:^|/)(?:models|vendor)/[^/]+/[0-9a-f]{8}/")
# The demo page carries one verification sample (and TensorFlow's output for it) when the
# model's input is at most this many values; larger inputs get a fixed pattern instead.
SAMPLE_MAX_VALUES = 1024
GZIP_LEVEL = 9
# Weight shards hold few distinct byte values, which gzip's level 9 searches slowly: on a
# 22M-parameter model, 36 s against 5 s at level 6, for 7.7 % more gzip bytes (browsers
# without brotli are few; the .br beside each shard is what most fetch).
SHARD_GZIP_LEVEL = 6
# How long the loader waits for IndexedDB before it takes the network (a read) or gives up
# caching (a write): a stuck database must not keep a page from its model.
IDB_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class WebReport:
    """The web target's part of the report."""

    root: str
    tfjs: str  # the page's tfjs URL
    cache: str
    first_visit_brotli_bytes: int  # the page, the loader, tfjs and the models, with brotli
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """`web`, at the report's top level."""
        return {"web": {k: v for k, v in dataclasses.asdict(self).items() if k != "warnings"}}

    def model_fields(self, name: str) -> dict[str, Any]:
        """Nothing per model."""
        return {}


class WebTarget:
    """A static site under `<out>/web/`."""

    name = "web"

    def shard_budget(self, config: Config) -> int:
        """The converter's shard size, which every major browser caches."""
        return limits.WEB_SHARD_BUDGET_BYTES

    def tfjs_version(self, config: Config) -> str | None:
        """The runtime the page loads, copied from npm or at `tfjs_url`."""
        return config.web.tfjs_version

    def runtime_request(self, config: Config) -> Request | None:
        """A script that sets `tf`, unless the page loads tfjs_url."""
        return None if config.web.tfjs_url else Request(config.web.tfjs_version, "web")

    def runtimes(self, config: Config) -> Sequence[NpmSet]:
        """No other npm packages."""
        return []

    def exporter(self, config: Config) -> None:
        """None: it ships the tfjs artifacts."""
        return None

    def render(
        self,
        config: Config,
        models: Sequence[ModelArtifacts],
        installed: Runtimes,
        exports: Mapping[str, Export],
        store: Cache,
    ) -> TargetOutput:
        """The site's files, compressed copies beside every one."""
        return _render(config, models, installed, Compressor(store))


TARGET = WebTarget()


def _render(
    config: Config, models: Sequence[ModelArtifacts], installed: Runtimes, squeeze: Compressor
) -> TargetOutput:
    site: dict[str, bytes] = {}
    # Precompressed forms already made by the build (the models' brotli shards).
    known_br: dict[str, bytes] = {}
    for m in models:
        folder = model_folder(m.name, m.hash)
        for name, content in m.files.items():
            if name.endswith(BROTLI_SUFFIX):
                known_br[f"{folder}/{name[: -len(BROTLI_SUFFIX)]}"] = content
            else:
                site[f"{folder}/{name}"] = content

    tfjs_src = config.web.tfjs_url
    if tfjs_src is None:
        tfjs = installed.tfjs(WebTarget.name).code
        tfjs_src = (
            f"{VENDOR_DIR}/tfjs-{config.web.tfjs_version}/{_digest(tfjs)[:HASH_LENGTH]}/{TFJS_FILE}"
        )
        site[tfjs_src] = tfjs

    data = {m.name: _model_data(m) for m in models}
    settings = {"cache": config.web.cache, "idbTimeoutMs": IDB_TIMEOUT_MS}
    site[MODELS_JS] = _text("web/bundler/models.js.j2", models=data, settings=settings)
    site[LOADER] = _text("web/bundler/loader.js.j2")
    demo = {
        "title": config.project.name,
        "order": [m.name for m in models],
        "samples": {m.name: _sample(m) for m in models},
    }
    site[INDEX] = _text(
        "web/index.html.j2", title=config.project.name, tfjs_src=tfjs_src, demo=demo
    )

    def compressed(rel: str) -> tuple[bytes, bytes]:
        raw = site[rel]
        br = known_br.get(rel)
        level = SHARD_GZIP_LEVEL if rel in known_br and not rel.endswith(".json") else GZIP_LEVEL
        return br if br is not None else squeeze.brotli(raw), squeeze.gzip(raw, level)

    # zlib and brotli release Python's lock: one thread per core, or more to wait on a shared
    # store's answers.
    threads = jobs() if squeeze.store.shared is None else max(jobs(), FETCH_THREADS)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        forms = dict(zip(site, pool.map(compressed, site), strict=True))
    files: dict[str, bytes] = {}
    for rel, raw in site.items():
        files[f"{WEB_DIR}/{rel}"] = raw
        files[f"{WEB_DIR}/{rel}{BROTLI_SUFFIX}"], files[f"{WEB_DIR}/{rel}{GZIP_SUFFIX}"] = forms[
            rel
        ]

    report = WebReport(
        root=WEB_DIR,
        tfjs=tfjs_src,
        cache=config.web.cache,
        first_visit_brotli_bytes=sum(len(files[f"{WEB_DIR}/{rel}{BROTLI_SUFFIX}"]) for rel in site),
    )
    return TargetOutput(files, report)


def is_immutable(path: str) -> bool:
    """True for a file under a content-hashed folder (a path relative to web/, or a URL path)."""
    return IMMUTABLE.search(path) is not None


class Compressor:
    """Brotli and gzip forms of file contents; those of large files are kept in the build
    cache by the sha256 of the input."""

    def __init__(self, store: Cache) -> None:
        self.store = store

    def brotli(self, data: bytes) -> bytes:
        """Brotli at the quality for text (11): the web's small files and tf.min.js."""
        quality = limits.TEXT_BROTLI_QUALITY
        return self._kept(
            data, f"q{quality}{BROTLI_SUFFIX}", lambda: brotli.compress(data, quality=quality)
        )

    def gzip(self, data: bytes, level: int = GZIP_LEVEL) -> bytes:
        """Gzip with no name and a zero mtime: equal inputs give equal bytes."""
        return self._kept(
            data, f"l{level}{GZIP_SUFFIX}", lambda: gzip.compress(data, level, mtime=0)
        )

    def _kept(self, data: bytes, kind: str, make: Callable[[], bytes]) -> bytes:
        if len(data) < limits.KEPT_COMPRESSED_MIN_BYTES:
            return make()
        key = f"{_digest(data)}.{kind}"
        form = self.store.derived(CACHE_SPACE, key, [kind], lambda: {kind: make()})
        return form[kind]


def _model_data(m: ModelArtifacts) -> dict[str, Any]:
    """What the loader knows of a model: where it is, how big, what it takes."""
    return {
        "name": m.name,
        "hash": m.hash,
        "format": m.format,
        "path": model_folder(m.name, m.hash),
        "bytes": len(m.model_json) + m.weight_bytes,
        "brotliBytes": len(m.model_json_br) + m.brotli_bytes,
        "shards": len(m.shards),
        "inputs": [
            {"name": s.name, "shape": s.example_shape(), "dtype": s.dtype} for s in m.inputs
        ],
    }


def _sample(m: ModelArtifacts) -> dict[str, Any] | None:
    """The first verification input, and the source model's output for it when known."""
    inputs, reference = m.verify_inputs, m.reference
    if not inputs or sum(a[:1].size for _, a in inputs) > SAMPLE_MAX_VALUES:
        return None
    sample: dict[str, Any] = {
        "inputs": [
            {
                "name": name,
                "shape": list(array[:1].shape),
                "dtype": "int32" if np.issubdtype(array.dtype, np.integer) else "float32",
                "values": _numbers(array[:1]),
            }
            for name, array in inputs
        ],
        "expected": None,
    }
    if reference and reference[0][:1].size <= SAMPLE_MAX_VALUES:
        sample["expected"] = {
            "shape": list(reference[0][:1].shape),
            "values": _numbers(reference[0][:1]),
        }
    return sample


def _numbers(array: np.ndarray[Any, Any]) -> list[float | int]:
    """Flat values, floats as the shortest text that reads back as the same float32."""
    flat = np.asarray(array).reshape(-1)
    if np.issubdtype(flat.dtype, np.integer):
        return [int(v) for v in flat]
    return [float(str(np.float32(v))) if np.isfinite(v) else 0.0 for v in flat]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _text(template: str, **data: Any) -> bytes:
    return render(template, **data).encode("utf-8")
