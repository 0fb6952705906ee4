"""Source model → `.tflite` with TensorFlow Lite's converter, checked in TFLite's interpreter.

Each source takes the way TFLite's own documentation gives it:

| source | converter |
|---|---|
| Keras 2 `.h5`, tfjs LayersModel | `TFLiteConverter.from_keras_model` on the tf_keras model |
| Keras 3 `.h5` / `.keras` | Keras' `model.export()` → `TFLiteConverter.from_saved_model` |
| SavedModel folder | `TFLiteConverter.from_saved_model`, signature `serving_default` |

`quantize` maps to TFLite's post-training options (QUANTIZATIONS). The file is then run by
`tf.lite.Interpreter` through its `serving_default` signature on the inputs every check of
the build takes (models/samples.py), against what the source model predicts for them.
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
from bundler.models import exports, samples, sources
from bundler.models.cache import tool_versions
from bundler.models.convert import (
    export_saved_model,
    first_line,
    load_keras,
    quiet_tensorflow,
    rejected_hint,
    serving_signature,
)
from bundler.models.exports import Exported
from bundler.models.verify import Metrics, metrics

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
# With samples, uint8 becomes TFLite's full-integer scheme: int8 weights and activations,
# calibrated on the samples one row at a time; inputs and outputs stay float32.
FULL_INTEGER = "int8, full integer"
# The converter's error lists the TensorFlow ops it could not map to builtins this way.
_SELECT_OPS = re.compile(r"TF Select ops: ([^\n]+)")
_FLEX_PREFIX = "Flex"

Arrays = dict[str, np.ndarray[Any, Any]]
Progress = Callable[[str], None]


def export(config: Config, model: ModelConfig, say: Progress) -> Exported:
    """The model as `<name>.tflite`, checked in TFLite's interpreter."""
    label = model.quantize.label
    assert isinstance(label, str), "the manifest refuses quantize tables with target tflite"
    full_integer = label == "uint8" and model.samples is not None
    quantization = FULL_INTEGER if full_integer else QUANTIZATIONS[label]
    say(f"converting {model.name} to TFLite ({quantization})")
    with tempfile.TemporaryDirectory(prefix="bundler-tflite-") as tmp, quiet_tensorflow():
        try:
            source = _converter(model, Path(tmp))
        except ModelError:
            raise
        except Exception as err:  # TensorFlow raises many kinds; the user needs the first line
            raise ModelError(
                f"TensorFlow could not load {model.input.path}: {first_line(err)}"
            ) from err
        converter = source.converter
        _configure(converter, label, config.tflite.select_tf_ops)
        if full_integer:
            _calibrate(converter, source, model, config.tflite.select_tf_ops)
        data = _convert(converter, model)
        found = contents(data)
        facts: dict[str, Any] = {
            "quantization": quantization,
            "ops": sum(found.ops.values()),
            "op_types": dict(sorted(found.ops.items())),
            "weight_types": dict(sorted(found.weights.items())),
            "select_tf_ops": sorted(op for op in found.ops if op.startswith(_FLEX_PREFIX)),
            exports.RUNTIME: f"TensorFlow Lite {tool_versions()['tensorflow']}",
            exports.ERROR: None,
        }
        if model.verify and config.project.verify:
            say(f"verifying {model.name} in TensorFlow Lite's interpreter")
            facts.update(_measure(data, source.reference, model).to_json())
    return Exported({f"{model.name}.tflite": data}, facts)


Reference = Callable[[Arrays], Arrays]  # signature inputs → outputs, keyed as the signature


@dataclass(frozen=True)
class Source:
    """The source model as TFLite's converter takes it."""

    converter: Any
    reference: Reference  # the source model's predictions, keyed as the signature
    specs: Callable[[], list[samples.Spec]]  # its inputs, in order (asked only to calibrate)
    by_name: bool  # calibration rows go by input name (a signature), else in order


def _converter(model: ModelConfig, tmp: Path) -> Source:
    """TFLite's converter for the source, and the source model's predictions by name."""
    import tensorflow as tf

    if model.input.kind == sources.SAVED_MODEL:
        serving_signature(model.input.path)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(model.input.path), signature_keys=[SIGNATURE]
        )

        def signature_specs() -> list[samples.Spec]:
            fn = tf.saved_model.load(str(model.input.path)).signatures[SIGNATURE]
            _, spec = fn.structured_input_signature
            return [(k, list(v.shape), _dtype(v.dtype.as_numpy_dtype)) for k, v in spec.items()]

        return Source(
            converter, _signature_reference(model.input.path), signature_specs, by_name=True
        )
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

    def keras_specs() -> list[samples.Spec]:
        return [
            (name, list(t.shape), _dtype(np.dtype(getattr(t.dtype, "name", t.dtype))))
            for name, t in zip(inputs, keras_model.inputs, strict=True)
        ]

    return Source(
        converter, _keras_reference(keras_model, inputs, names), keras_specs, loaded.keras3
    )


def _calibrate(converter: Any, source: Source, model: ModelConfig, select_tf_ops: bool) -> None:
    """Full-integer quantization, its ranges measured on the samples, one row at a time."""
    import tensorflow as tf

    inputs = samples.for_model(model, source.specs())

    def rows() -> Any:
        for i in range(inputs.rows):
            row = {name: a[i : i + 1] for name, a in inputs.arrays}
            yield row if source.by_name else list(row.values())

    converter.representative_dataset = rows
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if select_tf_ops:
        converter.target_spec.supported_ops.append(tf.lite.OpsSet.SELECT_TF_OPS)


def _signature_reference(saved_model: Path) -> Reference:
    """The SavedModel's serving_default, loaded when first asked (only to verify: seconds)."""
    import tensorflow as tf

    loaded: list[Any] = []

    def predict(feed: Arrays) -> Arrays:
        if not loaded:
            loaded.append(tf.saved_model.load(str(saved_model)).signatures[SIGNATURE])
        fn = loaded[0]
        _, spec = fn.structured_input_signature
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


def _measure(data: bytes, reference: Reference, model: ModelConfig) -> Metrics:
    """Run the file in TFLite's interpreter and the source model on the same inputs."""
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
    inputs = samples.for_model(model, specs)
    try:
        expected = _in_parts(reference, inputs, details)
        got = _in_parts(lambda part: dict(runner(**part)), inputs, details)
    except Exception as err:
        raise ModelError(
            f"the TFLite file and its source could not run on {inputs.describe()}: "
            f"{first_line(err)}{rejected_hint(inputs)}"
        ) from err
    if set(got) != set(expected):
        raise ModelError(
            f"the TFLite file's outputs ({', '.join(sorted(got))}) are not the source model's "
            f"({', '.join(sorted(expected))})"
        )
    names = sorted(got)
    return metrics([got[k] for k in names], [expected[k] for k in names])


def _in_parts(run: Reference, inputs: samples.Inputs, details: Mapping[str, Any]) -> Arrays:
    """`run` on a chunk of rows at a time, in the interpreter's dtypes; the outputs joined."""
    parts = [
        run({k: a.astype(details[k]["dtype"]) for k, a in part.items()}) for part in inputs.parts()
    ]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def _dtype(dtype: Any) -> str:
    return "int32" if np.issubdtype(np.dtype(dtype), np.integer) else "float32"
