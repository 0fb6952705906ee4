"""Source model → TensorFlow.js topology and float weights, plus reference predictions.

The only module that imports TensorFlow, and only when a model must really be converted.
Conversion goes through the tensorflowjs Python API in this process, unquantized and in one
shard; quantizing and sharding happen afterwards in `weights`, the same way for every input.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundler.errors import ModelError
from bundler.manifest import ModelConfig
from bundler.models import samples, sources, weights
from bundler.models.artifacts import input_specs
from bundler.models.samples import Inputs

log = logging.getLogger(__name__)

# One shard for the intermediate files: the real cut happens in `weights.pack`.
_ONE_SHARD = 1 << 40


@dataclass(frozen=True)
class Converted:
    """A model in TensorFlow.js form, before quantization and sharding."""

    model_json: dict[str, Any]  # everything but weightsManifest
    groups: list[list[weights.Weight]]
    inputs: Inputs  # verification inputs, by tfjs name
    reference: tuple[np.ndarray[Any, Any], ...] | None  # what TensorFlow predicts for them


def convert(model: ModelConfig, verify: bool) -> Converted:
    """Convert one model; with `verify`, also run the source model on the check's inputs
    (the model's samples, or made-up inputs that fit it: models/samples.py)."""
    kind = model.input.kind
    if (kind == sources.TFJS_LAYERS and model.format == "layers") or kind == sources.TFJS_GRAPH:
        # Already TensorFlow.js in the wanted format: only re-quantize and re-shard.
        doc, groups = read_tfjs(model.input.path)
        return Converted(doc, groups, samples.for_model(model, input_specs(doc)), None)
    with tempfile.TemporaryDirectory(prefix="bundler-convert-") as tmp:
        out = Path(tmp) / "tfjs"
        with quiet_tensorflow():
            keras_model = _convert_with_tensorflow(model, out, Path(tmp))
            doc, groups = read_tfjs(out / "model.json")
            inputs = samples.for_model(model, input_specs(doc))
            reference = _predict(model, keras_model, doc, inputs) if verify else None
    return Converted(doc, groups, inputs, reference)


def read_tfjs(model_json: Path) -> tuple[dict[str, Any], list[list[weights.Weight]]]:
    """Read a TensorFlow.js model.json and its shards, weights dequantized."""
    try:
        doc = json.loads(model_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{model_json}: cannot be read as JSON ({err})") from None
    kind = sources.tfjs_kind(doc)
    if kind is None:
        raise ModelError(f"{model_json}: not a TensorFlow.js model.json")
    groups = weights.read_groups(model_json, doc.pop("weightsManifest"))
    doc["format"] = "graph-model" if kind == sources.TFJS_GRAPH else "layers-model"
    return doc, groups


# --- conversion -----------------------------------------------------------------------------


def _convert_with_tensorflow(model: ModelConfig, out: Path, tmp: Path) -> Any:
    """Write tfjs artifacts for `model` into `out`; return the loaded source model, if any."""
    kind = model.input.kind
    src = model.input.path
    try:
        if kind == sources.SAVED_MODEL:
            _saved_model_to_graph(src, out)
            return None
        loaded = load_keras(model)
        if kind == sources.TFJS_LAYERS:  # and format == "graph"
            _tf_keras_to_graph(loaded.model, out)
        elif loaded.keras3 and model.format == "graph":
            exported = tmp / "saved_model"
            export_saved_model(loaded.model, exported)
            _saved_model_to_graph(exported, out)
        elif loaded.keras3:
            _keras3_to_layers(loaded.model, out)
        elif model.format == "graph":
            _tf_keras_to_graph(loaded.model, out)
        else:
            from tensorflowjs.converters import keras_h5_conversion

            keras_h5_conversion.save_keras_model(
                loaded.model, str(out), weight_shard_size_bytes=_ONE_SHARD
            )
        return loaded.model
    except ModelError:
        raise
    except Exception as err:  # TensorFlow raises many kinds; the user needs the first line
        raise ModelError(
            f"TensorFlow could not convert {src}: {first_line(err)}", model=model.name
        ) from err


@dataclass(frozen=True)
class KerasModel:
    """A source model loaded as Keras: by Keras 3, or by Keras 2 (tf_keras)."""

    model: Any
    keras3: bool


def load_keras(model: ModelConfig) -> KerasModel:
    """Load a Keras file or a tfjs LayersModel with the Keras that reads it (TensorFlow needed).

    TensorFlow's errors propagate; callers turn them into a ModelError naming the model.
    """
    src = model.input.path
    if model.input.kind == sources.TFJS_LAYERS:
        from tensorflowjs.converters import keras_tfjs_loader

        return KerasModel(keras_tfjs_loader.load_keras_model(str(src)), keras3=False)
    if model.input.kind not in (sources.KERAS_H5, sources.KERAS_V3):
        raise ValueError(f"{src} is a {model.input.kind}, not a Keras model")
    if _is_keras3(model.input):
        import keras

        return KerasModel(keras.models.load_model(src, compile=False), keras3=True)
    import tf_keras

    return KerasModel(tf_keras.models.load_model(src, compile=False), keras3=False)


def export_saved_model(keras3_model: Any, folder: Path) -> None:
    """A Keras 3 model as a SavedModel with a serving_default signature (Keras' export)."""
    with contextlib.redirect_stdout(io.StringIO()):  # export prints its signature
        keras3_model.export(str(folder))


def _is_keras3(source: sources.Source) -> bool:
    if source.kind == sources.KERAS_V3:
        return True
    return source.keras_version is not None and source.keras_version.startswith("3.")


def _saved_model_to_graph(saved_model: Path, out: Path) -> None:
    from tensorflowjs.converters import tf_saved_model_conversion_v2 as tfsm

    serving_signature(saved_model)
    tfsm.convert_tf_saved_model(
        str(saved_model),
        str(out),
        signature_def="serving_default",
        saved_model_tags="serve",
        weight_shard_size_bytes=_ONE_SHARD,
    )


def serving_signature(saved_model: Path) -> None:
    """Raise ModelError unless the SavedModel has a serving_default signature."""
    from tensorflow.python.saved_model import loader_impl

    # Read the signatures from saved_model.pb alone: loading the model costs seconds, and the
    # converters load it again anyway.
    meta = loader_impl.parse_saved_model(str(saved_model))
    signatures = sorted(
        {k for graph in meta.meta_graphs for k in graph.signature_def if not k.startswith("__")}
    )
    if "serving_default" not in signatures:
        found = ", ".join(signatures) if signatures else "none"
        raise ModelError(
            f"{saved_model}: the SavedModel has no serving_default signature (signatures: "
            f"{found}); save it with tf.saved_model.save(model, path, signatures=...) or "
            "keras model.export(path)"
        )


def _tf_keras_to_graph(keras_model: Any, out: Path) -> None:
    # In memory: no temporary SavedModel written and read back (the converter's CLI does that).
    from tensorflowjs.converters import tf_saved_model_conversion_v2 as tfsm

    tfsm.convert_keras_model_to_graph_model(
        keras_model, str(out), weight_shard_size_bytes=_ONE_SHARD
    )


def _keras3_to_layers(keras_model: Any, out: Path) -> None:
    """Write a Keras 3 model as a tfjs LayersModel.

    tensorflowjs 4.22 copies Keras 3 configs as they are, and no tfjs runtime reads them
    (`batch_shape`, dtype policies) nor the weight names of `.keras` files. Keras 3's config
    is mapped back to the Keras 2 schema that tfjs-layers reads, and weights are named
    `<layer>/<weight>` as tfjs-layers expects.
    """
    config = _keras2_config(json.loads(keras_model.to_json()))
    groups: list[weights.Weight] = []
    for layer in keras_model.layers:
        for variable in layer.weights:
            short = variable.path.split("/")[-1]
            groups.append(weights.Weight(f"{layer.name}/{short}", np.asarray(variable.numpy())))
    import keras

    doc = {
        "format": "layers-model",
        "generatedBy": f"keras v{keras.__version__}",
        "convertedBy": "model-bundler",
        "modelTopology": {
            "keras_version": "tfjs-layers 3.0.0",
            "backend": "tensorflow",
            "model_config": config,
        },
    }
    packed = weights.pack([groups], (), _ONE_SHARD)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in packed.shards:
        (out / name).write_bytes(data)
    (out / "model.json").write_text(json.dumps({**doc, "weightsManifest": packed.manifest}))


def _keras2_config(node: Any) -> Any:
    """Map a Keras 3 model config to the Keras 2 schema that tfjs-layers reads."""
    if isinstance(node, list):
        return [_keras2_config(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and "config" in node:
        return node["config"].get("name", "float32")
    result = {}
    for key, value in node.items():
        if key in ("module", "registered_name", "build_config", "compile_config"):
            continue
        if key == "batch_shape":
            key = "batch_input_shape"
        if key in ("optional", "quantization_config") and value in (None, False):
            continue
        result[key] = _keras2_config(value)
    if result.get("class_name") == "Functional":
        result["class_name"] = "Model"
    for key in ("input_layers", "output_layers"):
        # Keras 3 writes a single input as ["name", 0, 0]; Keras 2 always as a list of them.
        ends = result.get(key)
        if isinstance(ends, list) and ends and isinstance(ends[0], str):
            result[key] = [ends]
    inbound = result.get("inbound_nodes")
    if isinstance(inbound, list):
        result["inbound_nodes"] = [_keras2_inbound(n) for n in inbound]
    return result


def _keras2_inbound(node: Any) -> Any:
    # Keras 3: {"args": [{"class_name": "__keras_tensor__", "config": {"keras_history":
    # [layer, node, tensor]}}], "kwargs": {}}; Keras 2: [[layer, node, tensor, kwargs], ...].
    if not isinstance(node, dict) or "args" not in node:
        return node
    result = []

    def collect(value: Any) -> None:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            layer, index, tensor = value["config"]["keras_history"]
            result.append([layer, index, tensor, {}])
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(node["args"])
    return result


# --- verification inputs and the reference --------------------------------------------------


def _predict(
    model: ModelConfig,
    keras_model: Any,
    doc: dict[str, Any],
    inputs: Inputs,
) -> tuple[np.ndarray[Any, Any], ...]:
    """Run the source model in TensorFlow on the verification inputs, a chunk at a time."""
    import tensorflow as tf

    try:
        if keras_model is not None:

            def run(part: list[np.ndarray[Any, Any]]) -> Any:
                return keras_model(part[0] if len(part) == 1 else part, training=False)

        else:
            fn = tf.saved_model.load(str(model.input.path)).signatures["serving_default"]
            _, spec = fn.structured_input_signature
            keys = list(spec.keys())

            def run(part: list[np.ndarray[Any, Any]]) -> Any:
                return fn(
                    **{
                        k: tf.constant(a, dtype=spec[k].dtype)
                        for k, a in zip(keys, part, strict=True)
                    }
                )

        chunks = [_outputs(run(list(part.values())), doc) for part in inputs.parts()]
    except Exception as err:
        raise ModelError(
            f"TensorFlow could not run the source model on {inputs.describe()}: "
            f"{first_line(err)}{rejected_hint(inputs)}",
            model=model.name,
        ) from err
    return tuple(np.concatenate(parts) for parts in zip(*chunks, strict=True))


def _outputs(outputs: Any, doc: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    if isinstance(outputs, dict):
        # The graph model's outputs come in the order of its signature, keyed alike.
        order = list((doc.get("signature") or {}).get("outputs", {})) or list(outputs)
        outputs = [outputs[k] for k in order if k in outputs]
    elif not isinstance(outputs, list | tuple):
        outputs = [outputs]
    return [np.asarray(o, dtype=np.float32) for o in outputs]


def rejected_hint(inputs: Inputs) -> str:
    """What to tell a user whose model rejected made-up inputs (nothing for samples)."""
    if not inputs.made_up:
        return ""
    return (
        "; the inputs were made up from the model's input shapes: give real ones with "
        'samples = "<file>.npz", or the shapes to make them with input_shape = [...]'
    )


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
    """Keep TensorFlow's prints and C++ logs out of the user's terminal (-v logs them).

    TensorFlow's C++ side writes to file descriptor 2 directly, whatever TF_CPP_MIN_LOG_LEVEL
    says for some of its parts, so the descriptors themselves are pointed at a file.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tensorflow_decision_forests (imported by tensorflowjs) otherwise tries IPython for a
    # welcome banner, which fails when stdout is not a terminal.
    os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            printed = sink.read().decode("utf-8", "replace").strip()
            if printed:
                log.debug("tensorflow printed:\n%s", printed)


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:400]
