"""A converted model → the files that ship: canonical model.json, shards and their brotli copies."""

from __future__ import annotations

import copy
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import brotli

from bundler import limits
from bundler.errors import PlanError
from bundler.manifest import Quantize
from bundler.models import weights
from bundler.models.artifacts import BROTLI_SUFFIX, MODEL_JSON
from bundler.models.convert import Converted


def canonical_json(doc: Any) -> bytes:
    """JSON with sorted keys and no spaces, so equal models give equal bytes.

    The tfjs converter writes graph-node attributes in a varying order. The signature keeps
    its order: tfjs takes a graph model's inputs and outputs in that order.
    """

    def sort(node: Any, keep: bool) -> Any:
        if isinstance(node, dict):
            items = node.items() if keep else sorted(node.items())
            return {k: sort(v, keep or k == "signature") for k, v in items}
        if isinstance(node, list):
            return [sort(v, keep) for v in node]
        return node

    return json.dumps(sort(doc, False), separators=(",", ":"), ensure_ascii=False).encode()


def without_internal_attrs(doc: Any) -> Any:
    """A graph model.json without its nodes' internal attributes (names starting with `_`).

    TensorFlow keeps such attributes out of an op's definition; its optimizer adds them as it
    sees fit (`_input_shapes` on ops fused where it uses oneDNN, so it depends on the CPU and
    on TF_ENABLE_ONEDNN_OPTS). No tfjs op reads one, so they only made equal models differ.
    """
    topology = doc.get("modelTopology")
    if doc.get("format") != "graph-model" or not isinstance(topology, dict):
        return doc
    nodes = list(topology.get("node", []))
    for function in (topology.get("library") or {}).get("function", []):
        nodes += function.get("nodeDef", [])
    for node in nodes:
        attrs = node.get("attr")
        if isinstance(attrs, dict):
            for name in [n for n in attrs if n.startswith("_")]:
                del attrs[name]
    return doc


def compress(blobs: list[bytes], quality: int) -> list[bytes]:
    """Brotli every blob, in parallel threads (brotli releases the GIL)."""
    if len(blobs) <= 1:
        return [brotli.compress(b, quality=quality) for b in blobs]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda b: brotli.compress(b, quality=quality), blobs))


def build_files(
    converted: Converted, quantize: Quantize, cap: int, brotli_quality: int
) -> tuple[dict[str, bytes], weights.Packed]:
    """Quantize and shard so that every shard's brotli form is at most `cap` bytes.

    Weights barely compress, so shards are first cut at `cap` and cut smaller only when
    brotli's few bytes of framing push one over.
    """
    shard_bytes = cap
    while True:
        packed = weights.pack(converted.groups, quantize.dtype_map, shard_bytes)
        compressed = compress([data for _, data in packed.shards], brotli_quality)
        largest = max((len(c) for c in compressed), default=0)
        if largest <= cap:
            break
        shard_bytes = min(shard_bytes - 1024, shard_bytes * cap // largest - 1024)
        if shard_bytes < 1024:
            raise PlanError(f"no shard size fits a brotli budget of {cap} bytes")
    doc = {**copy.deepcopy(converted.model_json), "weightsManifest": packed.manifest}
    doc = without_internal_attrs(doc)
    model_json = canonical_json(doc)
    files = {
        MODEL_JSON: model_json,
        MODEL_JSON + BROTLI_SUFFIX: brotli.compress(model_json, quality=limits.TEXT_BROTLI_QUALITY),
    }
    for (name, data), br in zip(packed.shards, compressed, strict=True):
        files[name] = data
        files[name + BROTLI_SUFFIX] = br
    return files, packed
