"""What kind of model a source path holds, read from the files alone (no TensorFlow)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What the report calls each kind of input.
KERAS_H5 = "keras_h5"
KERAS_V3 = "keras"
SAVED_MODEL = "saved_model"
TFJS_LAYERS = "tfjs_layers"
TFJS_GRAPH = "tfjs_graph"

EXPECTED = "a Keras .h5 or .keras file, a SavedModel folder, or a TensorFlow.js model.json"


@dataclass(frozen=True)
class Source:
    """A model source on disk and what it is."""

    path: Path  # the file to read: the .h5/.keras file, the SavedModel folder, the model.json
    kind: str
    keras_version: str | None = None  # for Keras files: the Keras that wrote them


class SourceProblem(Exception):
    """The path is not a model we can read; the message says why, without the path."""


def detect(path: Path) -> Source:
    """Tell what kind of model `path` holds, or raise SourceProblem."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return Source(path, SAVED_MODEL)
        if (path / "model.json").is_file():
            return _tfjs(path / "model.json")
        raise SourceProblem(f"the folder has no saved_model.pb or model.json; expected {EXPECTED}")
    if not path.exists():
        raise SourceProblem("not found")
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise SourceProblem("the file is empty")
    if suffix in (".h5", ".hdf5"):
        return _keras_h5(path)
    if suffix == ".keras":
        return _keras_v3(path)
    if suffix == ".json":
        return _tfjs(path)
    raise SourceProblem(
        f"unknown kind of file {path.suffix or '(no extension)'}; expected {EXPECTED}"
    )


def _keras_h5(path: Path) -> Source:
    import h5py  # light (no TensorFlow); only needed for .h5 sources

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as err:
        raise SourceProblem(f"not a readable HDF5 file ({_first_line(err)})") from err
    if "model_config" not in attrs:
        if "layer_names" in attrs:
            raise SourceProblem(
                "the file holds weights only (save_weights); save the whole model with "
                "model.save(...) so its architecture is included"
            )
        raise SourceProblem("the HDF5 file holds no Keras model (no model_config)")
    version = _text(attrs.get("keras_version"))
    return Source(path, KERAS_H5, keras_version=version)


def _keras_v3(path: Path) -> Source:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise SourceProblem(f"not a readable .keras archive ({_first_line(err)})") from err
    if "config.json" not in names:
        raise SourceProblem("the .keras archive has no config.json")
    return Source(path, KERAS_V3, keras_version=_text(meta.get("keras_version")))


def _tfjs(path: Path) -> Source:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SourceProblem(f"not valid JSON ({_first_line(err)})") from err
    kind = tfjs_kind(doc)
    if kind is None:
        raise SourceProblem(
            "not a TensorFlow.js model.json (expected modelTopology and weightsManifest)"
        )
    return Source(path, kind)


def tfjs_kind(doc: Any) -> str | None:
    """TFJS_GRAPH or TFJS_LAYERS for a parsed model.json, None if it is neither."""
    if not isinstance(doc, dict) or not isinstance(doc.get("modelTopology"), dict):
        return None
    if not isinstance(doc.get("weightsManifest"), list):
        return None
    fmt = doc.get("format")
    if fmt == "graph-model":
        return TFJS_GRAPH
    if fmt == "layers-model":
        return TFJS_LAYERS
    # Files from converters before 1.x have no "format": tell them apart by their topology.
    topology = doc["modelTopology"]
    if "node" in topology:
        return TFJS_GRAPH
    if "model_config" in topology or "class_name" in topology:
        return TFJS_LAYERS
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
