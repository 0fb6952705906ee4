"""A layers model → a Keras file (`.keras`, or `.h5` by option), checked by loading it back.

Keras 3 writes `.keras`: a Keras 2 (tf_keras) model, a `.h5` or a tfjs LayersModel, goes
through an HDF5 file that Keras 3 reads. `.h5` is written by the Keras that loaded the source.
The file written is loaded again, by the Keras a user would load it with, and predicts on
the inputs every check of the build takes (models/samples.py), against the source.

A `.keras` archive carries the time it was saved (metadata.json, and the zip entries' times):
both are fixed here, so equal models give equal bytes and the folder named by them is stable.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bundler.errors import ModelError
from bundler.manifest import Config, ModelConfig
from bundler.models import exports, samples
from bundler.models.cache import tool_versions
from bundler.models.convert import (
    KerasModel,
    first_line,
    load_keras,
    quiet_tensorflow,
    rejected_hint,
)
from bundler.models.exports import Exported
from bundler.models.verify import Metrics, metrics

# The zip entries' time in a `.keras` file the bundler writes (the zip format's earliest).
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
Progress = Callable[[str], None]


def export(config: Config, model: ModelConfig, say: Progress) -> Exported:
    """The model as `<name>.keras` or `<name>.h5`, checked by loading it back."""
    suffix = config.keras.format
    say(f"saving {model.name} as a Keras file (.{suffix})")
    with tempfile.TemporaryDirectory(prefix="bundler-keras-") as tmp, quiet_tensorflow():
        path = Path(tmp) / f"{model.name}.{suffix}"
        try:
            loaded = load_keras(model)
            if suffix == "keras":
                _keras3(loaded, Path(tmp)).save(path)
            else:
                loaded.model.save(path)
        except Exception as err:  # TensorFlow raises many kinds; the user needs the first line
            raise ModelError(
                f"Keras could not save {model.input.path} as .{suffix}: {first_line(err)}"
            ) from err
        data = _stable_archive(path.read_bytes()) if suffix == "keras" else path.read_bytes()
        path.write_bytes(data)
        keras_version = tool_versions()[
            "keras" if suffix == "keras" or loaded.keras3 else "tf-keras"
        ]
        facts: dict[str, Any] = {
            "format": suffix,
            exports.RUNTIME: f"Keras {keras_version}",
            exports.ERROR: None,
        }
        if model.verify and config.project.verify:
            say(f"verifying {model.name}: loading the .{suffix} file back")
            facts.update(_measure(loaded, path, model).to_json())
    return Exported({path.name: data}, facts)


def _keras3(loaded: KerasModel, tmp: Path) -> Any:
    """The model as a Keras 3 model: itself, or read back from a Keras 2 HDF5 file."""
    if loaded.keras3:
        return loaded.model
    import keras

    h5 = tmp / "keras2.h5"
    loaded.model.save(h5)
    return keras.models.load_model(h5, compile=False)


def _stable_archive(data: bytes) -> bytes:
    """The `.keras` zip with a fixed save date and entry times; everything else as written."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            content = src.read(info)
            if info.filename == "metadata.json":
                meta = json.loads(content)
                meta.pop("date_saved", None)
                content = json.dumps(meta).encode()
            entry = zipfile.ZipInfo(info.filename, ZIP_TIME)
            entry.compress_type = info.compress_type
            entry.external_attr = info.external_attr
            dst.writestr(entry, content)
    return out.getvalue()


def _measure(loaded: KerasModel, path: Path, model: ModelConfig) -> Metrics:
    """Load the file back and compare its predictions with the source model's."""
    source = loaded.model
    names = list(source.input_names) if not loaded.keras3 else [t.name for t in source.inputs]
    specs = [
        (name, list(tensor.shape), _dtype(tensor.dtype))
        for name, tensor in zip(names, source.inputs, strict=True)
    ]
    inputs = samples.for_model(model, specs)
    try:
        if path.suffix == ".keras" or loaded.keras3:
            import keras

            reloaded = keras.models.load_model(path, compile=False)
        else:
            import tf_keras

            reloaded = tf_keras.models.load_model(path, compile=False)
        expected = _predict(source, inputs)
        got = _predict(reloaded, inputs)
    except Exception as err:
        raise ModelError(
            f"the {path.suffix} file did not load back and predict on {inputs.describe()}: "
            f"{first_line(err)}{rejected_hint(inputs)}"
        ) from err
    return metrics(got, expected)


def _predict(keras_model: Any, inputs: samples.Inputs) -> list[Any]:
    parts = []
    for part in inputs.parts():
        arrays = list(part.values())
        feed = arrays[0] if len(arrays) == 1 else arrays
        parts.append(_outputs(keras_model(feed, training=False)))
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


def _outputs(result: Any) -> list[np.ndarray[Any, Any]]:
    values = list(result) if isinstance(result, list | tuple) else [result]
    return [np.asarray(v, dtype=np.float64) for v in values]


def _dtype(dtype: Any) -> str:
    name = getattr(dtype, "name", str(dtype))
    return "int32" if "int" in name else "float32"
