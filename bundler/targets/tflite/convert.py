"""Source model → `.tflite` with TensorFlow Lite's converter, checked in TFLite's interpreter.

Each source takes the way TFLite's own documentation gives it:

| source | converter |
|---|---|
| Keras 2 `.h5`, tfjs LayersModel | `TFLiteConverter.from_keras_model` on the tf_keras model |
| Keras 3 `.h5` / `.keras` | Keras' `model.export()` → `TFLiteConverter.from_saved_model` |
| SavedModel folder | `TFLiteConverter.from_saved_model`, signature `serving_default` |

`quantize` maps to TFLite's post-training options (QUANTIZATIONS). The file is then run by
`tf.lite.Interpreter` through its `serving_default` signature on the inputs every check of
the build draws (convert.sample_inputs), against what the source model predicts for them.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundler.errors import ModelError
from bundler.manifest import Config, ModelConfig
from bundler.models import exports, sources
from bundler.models.cache import tool_versions
from bundler.models.convert import (
    export_saved_model,
    first_line,
    load_keras,
    quiet_tensorflow,
    sample_inputs,
    serving_signature,
)
from bundler.models.exports import Exported

SIGNATURE = "serving_default"
# What each `quantize` becomes, as the report says it. Without sample data TFLite has one 8-bit
# weight scheme (dynamic range: int8 weights, float activations, small tensors left float32),
# taken for uint16 too, which TFLite has no 16-bit form of.
QUANTIZATIONS = {
    "none": "float32",
    "float16": "float16",
    "uint16": "int8, dynamic range",
    "uint8": "int8, dynamic range",
}
# The converter's error lists the TensorFlow ops it could not map to builtins this way.
_SELECT_OPS = re.compile(r"TF Select ops: ([^\n]+)")
_FLEX_PREFIX = "Flex"

Arrays = dict[str, np.ndarray[Any, Any]]
Progress = Callable[[str], None]


def export(config: Config, model: ModelConfig, say: Progress) -> Exported:
    """The model as `<name>.tflite`, checked in TFLite's interpreter."""
    label = model.quantize.label
    assert isinstance(label, str), "the manifest refuses quantize tables with target tflite"
    say(f"converting {model.name} to TFLite ({QUANTIZATIONS[label]})")
    with tempfile.TemporaryDirectory(prefix="bundler-tflite-") as tmp, quiet_tensorflow():
        try:
            converter, reference = _converter(model, Path(tmp))
        except ModelError:
            raise
        except Exception as err:  # TensorFlow raises many kinds; the user needs the first line
            raise ModelError(
                f"TensorFlow could not load {model.input.path}: {first_line(err)}"
            ) from err
        _configure(converter, label, config.tflite.select_tf_ops)
        data = _convert(converter, model)
        found = contents(data)
        facts: dict[str, Any] = {
            "quantization": QUANTIZATIONS[label],
            "ops": sum(found.ops.values()),
            "op_types": dict(sorted(found.ops.items())),
            "weight_types": dict(sorted(found.weights.items())),
            "select_tf_ops": sorted(op for op in found.ops if op.startswith(_FLEX_PREFIX)),
            exports.RUNTIME: f"TensorFlow Lite {tool_versions()['tensorflow']}",
            exports.ERROR: None,
        }
        if model.verify and config.project.verify:
            say(f"verifying {model.name} in TensorFlow Lite's interpreter")
            facts[exports.ERROR] = _max_error(data, reference, model)
    return Exported({f"{model.name}.tflite": data}, facts)


Reference = Callable[[Arrays], Arrays]  # signature inputs → outputs, keyed as the signature


def _converter(model: ModelConfig, tmp: Path) -> tuple[Any, Reference]:
    """TFLite's converter for the source, and the source model's predictions by name."""
    import tensorflow as tf

    if model.input.kind == sources.SAVED_MODEL:
        serving_signature(model.input.path)
        fn = tf.saved_model.load(str(model.input.path)).signatures[SIGNATURE]
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(model.input.path), signature_keys=[SIGNATURE]
        )
        return converter, _signature_reference(fn)
    loaded = load_keras(model)
    keras_model = loaded.model
    if loaded.keras3:
        exported = tmp / "saved_model"
        export_saved_model(keras_model, exported)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(exported), signature_keys=[SIGNATURE]
        )
        # Keras' export names the outputs output_0, output_1, ... in the model's order.
        names = [f"output_{i}" for i in range(len(keras_model.outputs))]
        inputs = [t.name for t in keras_model.inputs]
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        names = list(keras_model.output_names)
        inputs = list(keras_model.input_names)
    return converter, _keras_reference(keras_model, inputs, names)


def _signature_reference(fn: Any) -> Reference:
    import tensorflow as tf

    _, spec = fn.structured_input_signature

    def predict(feed: Arrays) -> Arrays:
        outputs = fn(**{k: tf.constant(a, dtype=spec[k].dtype) for k, a in feed.items()})
        return {k: np.asarray(v) for k, v in outputs.items()}

    return predict


def _keras_reference(keras_model: Any, inputs: list[str], outputs: list[str]) -> Reference:
    def predict(feed: Arrays) -> Arrays:
        # Inputs in the model's order; the signature names them as the model does.
        ordered = (
            [feed[name] for name in inputs] if set(inputs) == set(feed) else list(feed.values())
        )
        result = keras_model(ordered[0] if len(ordered) == 1 else ordered, training=False)
        values = list(result) if isinstance(result, list | tuple) else [result]
        return {name: np.asarray(v) for name, v in zip(outputs, values, strict=True)}

    return predict


def _configure(converter: Any, quantize: str, select_tf_ops: bool) -> None:
    import tensorflow as tf

    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if select_tf_ops:
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS,
            tf.lite.OpsSet.SELECT_TF_OPS,
        ]


def _convert(converter: Any, model: ModelConfig) -> bytes:
    try:
        data: bytes = converter.convert()
    except Exception as err:
        select = _SELECT_OPS.search(str(err))
        if select is not None:
            raise ModelError(
                f"needs TensorFlow ops that TFLite's builtins lack: {select.group(1).strip()}. "
                "Set select_tf_ops = true in [tflite] to ship them as select TensorFlow ops "
                "(the app must then link TFLite's Flex delegate), or replace them in the model"
            ) from err
        raise ModelError(f"TFLite's converter failed: {first_line(err)}") from err
    return data


@dataclass(frozen=True)
class Contents:
    """What a `.tflite` file holds, read from its flatbuffer."""

    ops: Counter[str]  # operator kind → how many, over all subgraphs
    weights: Counter[str]  # constant tensors by type: {"float32": 3, "int8": 52}


def contents(data: bytes) -> Contents:
    """The operators and constant tensors of a `.tflite` file."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    kinds = []
    for code in root.operatorCodes or []:
        if code.customCode:
            kinds.append(code.customCode.decode())
        else:
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            kinds.append(op_names.get(builtin, str(builtin)))
    ops: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    buffers = root.buffers or []
    for graph in root.subgraphs or []:
        for op in graph.operators or []:
            ops[kinds[op.opcodeIndex]] += 1
        for tensor in graph.tensors or []:
            buffer = buffers[tensor.buffer] if 0 < tensor.buffer < len(buffers) else None
            if buffer is not None and (buffer.data is not None or buffer.size):
                weights[type_names.get(tensor.type, str(tensor.type))] += 1
    return Contents(ops, weights)


def _max_error(data: bytes, reference: Reference, model: ModelConfig) -> float:
    import tensorflow as tf

    with warnings.catch_warnings():
        # TF 2.19 warns that tf.lite.Interpreter moves to the ai_edge_litert package.
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=data)
    runner = interpreter.get_signature_runner(SIGNATURE)
    details: Mapping[str, Any] = runner.get_input_details()
    specs = [
        (name, [int(d) for d in detail["shape_signature"]], _dtype(detail["dtype"]))
        for name, detail in details.items()
    ]
    feed = {name: array.astype(details[name]["dtype"]) for name, array in sample_inputs(specs)}
    try:
        expected = reference(feed)
        got = runner(**feed)
    except Exception as err:
        raise ModelError(
            "the TFLite file and its source could not run on sample inputs of shapes "
            f"{[list(a.shape) for a in feed.values()]}: {first_line(err)}"
        ) from err
    if set(got) != set(expected):
        raise ModelError(
            f"the TFLite file's outputs ({', '.join(sorted(got))}) are not the source model's "
            f"({', '.join(sorted(expected))})"
        )
    return max(
        (
            float(np.max(np.abs(got[k].astype(np.float64) - expected[k])))
            for k in got
            if got[k].size
        ),
        default=0.0,
    )


def _dtype(dtype: Any) -> str:
    return "int32" if np.issubdtype(np.dtype(dtype), np.integer) else "float32"
