"""ModelArtifacts: one model as every target sees it, named by the bytes it ships.

A target reads nothing else of a model: not the cache, not the converter, not the source.
The content hash that names the model's folders, URLs and cache keys in the glue is computed
from the files written (the canonical model.json, the shards and their brotli copies), so
two builds that write other bytes get other folders, and equal bytes equal folders, whatever
machine converted them. The build cache keys entries by the inputs instead (cache.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bundler.manifest import ModelConfig

if TYPE_CHECKING:
    from bundler.models.verify import Metrics

MODEL_JSON = "model.json"
BROTLI_SUFFIX = ".br"
# Hex digits of the content hash in folder names: a clash needs the same model name too.
HASH_LENGTH = 8

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Shard:
    """One weight file as written, and its brotli form."""

    name: str  # as the weightsManifest names it: "group1-shard1of2.bin"
    raw: bytes
    brotli: bytes


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the tfjs runtime names it; None or -1 for a free size."""

    name: str
    shape: tuple[int | None, ...] | None  # None: not known without running the model
    dtype: str  # "float32" | "int32"

    def example_shape(self) -> list[int]:
        """The shape with every free size taken as 1 (a one-row batch)."""
        return [1 if d is None or d < 0 else d for d in self.shape or ()]


@dataclass(frozen=True)
class ModelArtifacts:
    """A converted, quantized, sharded and verified model: all a target sees of it."""

    model: ModelConfig
    hash: str
    model_json: bytes  # canonical, as written
    model_json_br: bytes
    doc: Mapping[str, Any]  # model_json parsed
    shards: tuple[Shard, ...]  # in weightsManifest order
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    verify_inputs: tuple[tuple[str, Array], ...]  # by input name
    reference: tuple[Array, ...]  # the source model's outputs for them; empty if unknown
    params: int
    source_bytes: int
    metrics: Mapping[str, Metrics]  # tfjs version → how far from the source model
    made_up_inputs: bool = True  # verified on made-up inputs, not the user's samples
    # quantize = "auto": the chosen table (dtype → weight names), what TensorFlow measured
    # for it on the samples, and how many candidates were judged; None otherwise.
    auto: Mapping[str, Any] | None = None

    @property
    def errors(self) -> dict[str, float]:
        """tfjs version → the largest absolute error against the source model."""
        return {version: m.max_abs_error for version, m in self.metrics.items()}

    @property
    def name(self) -> str:
        """The model's name in the manifest."""
        return self.model.name

    @property
    def format(self) -> str:
        """ "graph" or "layers"."""
        return self.model.format

    @property
    def files(self) -> dict[str, bytes]:
        """Every file of the model folder: model.json first, then each shard, `.br` beside."""
        files = {MODEL_JSON: self.model_json, MODEL_JSON + BROTLI_SUFFIX: self.model_json_br}
        for shard in self.shards:
            files[shard.name] = shard.raw
            files[shard.name + BROTLI_SUFFIX] = shard.brotli
        return files

    @property
    def weight_bytes(self) -> int:
        """Bytes of the shards as written."""
        return sum(len(s.raw) for s in self.shards)

    @property
    def brotli_bytes(self) -> int:
        """Bytes of the shards' brotli forms."""
        return sum(len(s.brotli) for s in self.shards)


def content_hash(digests: Mapping[str, str]) -> str:
    """The hash naming a model folder, from its files' sha256 digests (file name → hex)."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}\0{digests[name]}\n".encode())
    return h.hexdigest()[:HASH_LENGTH]


def shard_names(doc: Mapping[str, Any]) -> list[str]:
    """The shard files a model.json names, in order."""
    return [p for group in doc.get("weightsManifest", []) for p in group["paths"]]


def tensor_specs(
    doc: Mapping[str, Any], reference: tuple[Array, ...]
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs of a model.json; output shapes from `reference` when known."""
    inputs = tuple(TensorSpec(n, tuple(s), t) for n, s, t in input_specs(doc))
    names = _output_names(doc)
    outputs = []
    for i, name in enumerate(names):
        shape = (None, *reference[i].shape[1:]) if i < len(reference) else None
        outputs.append(TensorSpec(name, shape, "float32"))
    return inputs, tuple(outputs)


def _output_names(doc: Mapping[str, Any]) -> list[str]:
    if doc.get("format") == "graph-model":
        outputs = (doc.get("signature") or {}).get("outputs", {})
        return [str(spec.get("name", key)).split(":")[0] for key, spec in outputs.items()]
    topology = doc.get("modelTopology", {})
    config = topology.get("model_config", topology)
    if config.get("class_name") == "Sequential":
        layers = config.get("config", {}).get("layers", [])
        return [layers[-1]["config"]["name"]] if layers else []
    return [entry[0] for entry in config.get("config", {}).get("output_layers", [])]


def input_specs(doc: Mapping[str, Any]) -> list[tuple[str, list[int | None], str]]:
    """(name, shape, dtype) of each input of a tfjs model.json, in the runtime's order."""
    topology = doc.get("modelTopology", {})
    specs: list[tuple[str, list[int | None], str]] = []
    if doc.get("format") == "graph-model":
        for key, spec in (doc.get("signature") or {}).get("inputs", {}).items():
            dims = [int(d.get("size", -1)) for d in spec.get("tensorShape", {}).get("dim", [])]
            dtype = _GRAPH_DTYPES.get(str(spec.get("dtype")), "float32")
            specs.append((str(spec.get("name", key)).split(":")[0], list(dims), dtype))
        if not specs:
            for node in topology.get("node", []):
                if node.get("op") == "Placeholder":
                    shape = node.get("attr", {}).get("shape", {}).get("shape", {})
                    dims = [int(d.get("size", -1)) for d in shape.get("dim", [])]
                    specs.append((node["name"], list(dims), "float32"))
        return specs
    config = topology.get("model_config", topology)
    layers = config.get("config", {}).get("layers", [])
    if config.get("class_name") == "Sequential":
        first = layers[0]["config"] if layers else {}
        shape = first.get("batch_input_shape") or [None, *first.get("input_shape", [])]
        specs.append((first.get("name", "input"), shape, _dtype(first.get("dtype"))))
        return specs
    by_name = {layer["config"]["name"]: layer["config"] for layer in layers}
    for entry in config.get("config", {}).get("input_layers", []):
        layer = by_name.get(entry[0], {})
        specs.append((entry[0], layer.get("batch_input_shape", [None]), _dtype(layer.get("dtype"))))
    return specs


# A graph model's input dtypes as tfjs feeds them (int64 becomes int32 in tfjs).
_GRAPH_DTYPES = {"DT_INT32": "int32", "DT_INT64": "int32", "DT_BOOL": "bool"}


def _dtype(value: Any) -> str:
    if value == "bool":
        return "bool"
    return "int32" if value in ("int32", "int64") else "float32"
