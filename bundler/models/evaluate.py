"""Run a converted model in TensorFlow, in Python, with any set of weights: how quantize = "auto"
judges a candidate without a round trip to tfjs.

A tfjs LayersModel is rebuilt as a tf_keras model from its topology; a tfjs GraphModel as a
TensorFlow graph from its GraphDef, each weight a placeholder fed per run, so one graph serves
every candidate. tensorflowjs fuses some ops into forms only tfjs runs (a depthwise convolution
with its bias and activation, PReLU); those are split back into TensorFlow's own ops, which
compute the same values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bundler.errors import ModelError
from bundler.models.artifacts import input_specs

Array = np.ndarray[Any, Any]

# tfjs graph ops that fuse a contraction, a bias and an activation, and the TensorFlow op of
# the contraction alone.
_FUSED = {
    "_FusedConv2D": "Conv2D",
    "_FusedMatMul": "MatMul",
    "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative",
}
_ACTIVATIONS = {"Relu", "Relu6", "Elu", "Sigmoid", "Tanh", "LeakyRelu", "Prelu"}
# The attributes each contraction keeps; the fused node's others (fused_ops, num_args,
# epsilon, leakyrelu_alpha) belong to the fusion.
_KEEP = {
    "Conv2D": ("T", "strides", "padding", "explicit_paddings", "data_format", "dilations"),
    "MatMul": ("T", "transpose_a", "transpose_b"),
    "DepthwiseConv2dNative": (
        "T",
        "strides",
        "padding",
        "explicit_paddings",
        "data_format",
        "dilations",
    ),
}


class Evaluator:
    """A converted model in TensorFlow: `run(weights)` → its outputs on fixed inputs."""

    def __init__(
        self,
        fmt: str,
        doc: Mapping[str, Any],
        weights: Mapping[str, Array],
        inputs: Sequence[tuple[str, Array]],
        chunk: int,
    ) -> None:
        self._inputs = list(inputs)
        self._chunk = chunk
        self._run = _graph(doc, weights) if fmt == "graph" else _layers(doc)

    def run(self, weights: Mapping[str, Array]) -> list[Array]:
        """The model's outputs on the inputs, with these weights (by tfjs name)."""
        rows = int(self._inputs[0][1].shape[0]) if self._inputs else 1
        parts = []
        for start in range(0, max(rows, 1), self._chunk):
            part = [(n, a[start : start + self._chunk]) for n, a in self._inputs]
            parts.append(self._run(weights, part))
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


Runner = Any  # (weights, inputs) → list of outputs


def _layers(doc: Mapping[str, Any]) -> Runner:
    import tf_keras
    from tensorflowjs.converters import keras_h5_conversion

    topology = doc["modelTopology"]
    config = topology.get("model_config", topology)
    model = tf_keras.models.model_from_json(json.dumps(config))
    names = []
    for layer in model.layers:
        for w in layer.weights:
            names.append(keras_h5_conversion.normalize_weight_name(w.name))
    order = list(getattr(model, "input_names", None) or [])

    def run(weights: Mapping[str, Array], part: Sequence[tuple[str, Array]]) -> list[Array]:
        model.set_weights([_weight(weights, name) for name in names])
        by_name = dict(part)
        arrays = (
            [by_name[n] for n in order] if set(order) == set(by_name) else list(by_name.values())
        )
        result = model(arrays[0] if len(arrays) == 1 else arrays, training=False)
        values = list(result) if isinstance(result, list | tuple) else [result]
        return [np.asarray(v, dtype=np.float32) for v in values]

    return run


def _weight(weights: Mapping[str, Array], name: str) -> Array:
    if name in weights:
        return weights[name]
    # tf_keras names a cell's weights layer/cell/weight; tfjs layer/weight.
    tokens = name.split("/")
    return weights["/".join([*tokens[:-2], tokens[-1]])]


def _graph(doc: Mapping[str, Any], weights: Mapping[str, Array]) -> Runner:
    import tensorflow as tf
    from google.protobuf import json_format

    graph_def = json_format.ParseDict(
        {k: v for k, v in doc["modelTopology"].items() if k in ("node", "library", "versions")},
        tf.compat.v1.GraphDef(),
    )
    # Float weights are what candidates change: placeholders, fed per run. The others (shapes,
    # indices) stay constants, which TensorFlow's shape inference needs.
    names = {name for name, a in weights.items() if a.dtype == np.float32}
    # The shape each weight's node declares: the weights manifest writes a scalar as [1].
    shapes: dict[str, list[int]] = {}
    nodes = []
    for node in graph_def.node:
        if node.name in weights and node.op == "Const":
            dims = [int(d.size) for d in node.attr["value"].tensor.tensor_shape.dim]
            shapes[node.name] = dims
        if node.name in names and node.op == "Const":
            node.op = "Placeholder"
            dtype = node.attr["dtype"]
            node.ClearField("attr")
            node.attr["dtype"].CopyFrom(dtype)
            nodes.append(node)
        elif node.name in weights and node.op == "Const":
            value = _declared(weights[node.name], shapes[node.name])
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
            nodes.append(node)
        elif node.op in _FUSED:
            nodes.extend(_unfuse(node))
        elif node.op == "Prelu":
            nodes.extend(_prelu(node, node.name, node.input[0], node.input[1]))
        else:
            nodes.append(node)
    del graph_def.node[:]
    graph_def.node.extend(nodes)
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as err:
            raise ModelError(
                'quantize = "auto" cannot run this graph model in TensorFlow to judge '
                f"candidates ({str(err).splitlines()[0]}); choose a quantize dtype"
            ) from err
    session = tf.compat.v1.Session(graph=graph)
    signature = doc.get("signature") or {}
    outputs = [str(spec.get("name", key)) for key, spec in (signature.get("outputs") or {}).items()]
    fetches = [graph.get_tensor_by_name(o if ":" in o else o + ":0") for o in outputs]
    feeds = {name: graph.get_tensor_by_name(name + ":0") for name, _, _ in input_specs(doc)}
    weight_tensors = {
        name: graph.get_tensor_by_name(name + ":0") for name in names if name in shapes
    }

    def run(weights: Mapping[str, Array], part: Sequence[tuple[str, Array]]) -> list[Array]:
        feed: dict[Any, Array] = {
            weight_tensors[n]: _declared(weights[n], shapes.get(n)) for n in weight_tensors
        }
        feed.update({feeds[name]: array for name, array in part})
        return [np.asarray(v, dtype=np.float32) for v in session.run(fetches, feed)]

    return run


def _declared(array: Array, shape: list[int] | None) -> Array:
    """`array` in the shape its graph node declares, when that holds as many values."""
    if shape is None or list(array.shape) == shape or int(np.prod(shape)) != array.size:
        return array
    return array.reshape(shape)


def _unfuse(node: Any) -> list[Any]:
    """A tfjs fused contraction as TensorFlow's contraction, BiasAdd and activation."""
    from tensorflow.core.framework import node_def_pb2

    fused = [op.decode() for op in node.attr["fused_ops"].list.s]
    if not fused or fused[0] != "BiasAdd" or any(op not in _ACTIVATIONS for op in fused[1:]):
        raise ModelError(
            f'quantize = "auto" cannot run {node.op} with {fused} in TensorFlow; choose a '
            "quantize dtype"
        )
    contraction = _FUSED[node.op]
    x, w, bias, *extra = node.input
    base = node_def_pb2.NodeDef(name=f"{node.name}/contraction", op=contraction, input=[x, w])
    for key in _KEEP[contraction]:
        if key in node.attr:
            base.attr[key].CopyFrom(node.attr[key])
    t = node.attr["T"]
    last = fused[-1] if len(fused) > 1 else None
    add_name = node.name if last is None else f"{node.name}/bias"
    add = node_def_pb2.NodeDef(name=add_name, op="BiasAdd", input=[base.name, bias])
    add.attr["T"].CopyFrom(t)
    if "data_format" in node.attr and contraction != "MatMul":
        add.attr["data_format"].CopyFrom(node.attr["data_format"])
    result = [base, add]
    if last == "Prelu":
        result += _prelu(node, node.name, add_name, extra[0])
    elif last is not None:
        act = node_def_pb2.NodeDef(name=node.name, op=last, input=[add_name])
        act.attr["T"].CopyFrom(t)
        if last == "LeakyRelu" and "leakyrelu_alpha" in node.attr:
            act.attr["alpha"].CopyFrom(node.attr["leakyrelu_alpha"])
        result.append(act)
    return result


def _prelu(node: Any, name: str, x: str, alpha: str) -> list[Any]:
    """prelu(x) = relu(x) - alpha * relu(-x), in TensorFlow's ops."""
    from tensorflow.core.framework import node_def_pb2

    t = node.attr["T"]
    parts = [
        node_def_pb2.NodeDef(name=f"{name}/pos", op="Relu", input=[x]),
        node_def_pb2.NodeDef(name=f"{name}/neg_x", op="Neg", input=[x]),
        node_def_pb2.NodeDef(name=f"{name}/neg", op="Relu", input=[f"{name}/neg_x"]),
        node_def_pb2.NodeDef(name=f"{name}/scaled", op="Mul", input=[alpha, f"{name}/neg"]),
        node_def_pb2.NodeDef(name=name, op="Sub", input=[f"{name}/pos", f"{name}/scaled"]),
    ]
    for part in parts:
        part.attr["T"].CopyFrom(t)
    return parts
