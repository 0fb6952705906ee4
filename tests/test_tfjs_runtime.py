"""The tfjs runtime built for a bundle: kernels derived statically, the fixed API, and a kernel
left out caught by verification in that very file."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import needs_node

from bundler import runtimes
from bundler.errors import VerifyError
from bundler.models.cache import Cache
from bundler.models.verify import Check, Runtime, verify
from bundler.tfjs_runtime import api
from bundler.tfjs_runtime import build as rb
from bundler.tfjs_runtime.kernels import KernelIndex, Unknown, layer_classes, tool_export

pytestmark = needs_node

VERSION = "3.21.0"


@pytest.fixture(scope="module")
def packages() -> Path:
    npm = rb.tools(VERSION)
    return runtimes.ensure_packages(npm.folder, dict(npm.packages), purpose=npm.purpose)


@pytest.fixture(scope="module")
def index(packages: Path) -> KernelIndex:
    return KernelIndex(packages / "node_modules")


def graph(*ops: str, library: tuple[str, ...] = ()) -> dict[str, Any]:
    nodes = [{"name": f"n{i}", "op": op} for i, op in enumerate(ops)]
    functions = [{"nodeDef": [{"name": f"f{i}", "op": op} for i, op in enumerate(library)]}]
    return {
        "format": "graph-model",
        "modelTopology": {"node": nodes, "library": {"function": functions}},
    }


def dense_model(units: int = 2, inputs: int = 3) -> dict[str, Any]:
    """A tfjs layers model.json: one Dense layer."""
    layer = {
        "class_name": "Dense",
        "config": {
            "name": "d",
            "units": units,
            "activation": "linear",
            "use_bias": True,
            "batch_input_shape": [None, inputs],
            "dtype": "float32",
            "kernel_initializer": {"class_name": "Zeros", "config": {}},
            "bias_initializer": {"class_name": "Zeros", "config": {}},
        },
    }
    return {
        "format": "layers-model",
        "generatedBy": "test",
        "convertedBy": "test",
        "modelTopology": {
            "class_name": "Sequential",
            "config": {"name": "s", "layers": [layer]},
            "keras_version": "tfjs-layers 3.21.0",
            "backend": "tensor_flow.js",
        },
        "weightsManifest": [
            {
                "paths": ["group1-shard1of1.bin"],
                "weights": [
                    {"name": "d/kernel", "shape": [inputs, units], "dtype": "float32"},
                    {"name": "d/bias", "shape": [units], "dtype": "float32"},
                ],
            }
        ],
    }


# --- kernels, statically --------------------------------------------------------------------


def test_an_op_reaches_the_kernels_of_the_ops_it_calls(index: KernelIndex) -> None:
    assert index.kernels_of_ops(["conv2d"]) == {"Conv2D", "Reshape"}
    # The fused conv2d runs its activation and bias on every path.
    fused = index.kernels_of_ops(["fused.conv2d"])
    assert {"FusedConv2D", "Relu", "Relu6", "Sigmoid", "Add"} <= fused


def test_graph_kernels_come_from_the_converter_table(index: KernelIndex) -> None:
    kernels, unknown = index.graph_kernels(
        graph("Placeholder", "Const", "MatMul", "BiasAdd", "Softmax", "NoSuchOp", library=("Tanh",))
    )
    assert {"BatchMatMul", "Add", "Softmax", "Tanh"} <= kernels
    assert "Conv2D" not in kernels
    assert unknown == [Unknown("NoSuchOp")]


def test_layer_classes_are_found_in_nested_and_wrapped_configs() -> None:
    topology = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {"class_name": "InputLayer", "config": {}},
                {
                    "class_name": "TimeDistributed",
                    "config": {"layer": {"class_name": "Conv2D", "config": {}}},
                },
                {"class_name": "Sequential", "config": {"layers": [{"class_name": "GRU"}]}},
            ]
        },
    }
    assert set(layer_classes(topology)) == {
        "Functional",
        "InputLayer",
        "TimeDistributed",
        "Conv2D",
        "Sequential",
        "GRU",
    }


def test_layers_kernels_cover_predict_in_batches(index: KernelIndex) -> None:
    """tfjs-layers predicts in batches of 32 and concatenates: Concat, with a Dense alone."""
    kernels = index.layers_kernels(dense_model())
    assert {"BatchMatMul", "_FusedMatMul", "Concat", "Slice"} <= kernels
    assert "Conv2D" not in kernels
    conv = {"class_name": "Sequential", "config": {"layers": [{"class_name": "Conv2D"}]}}
    assert "Conv2D" in index.layers_kernels({"modelTopology": conv})


def test_kernels_the_tool_would_miss_are_registered_by_the_entry(
    index: KernelIndex, packages: Path
) -> None:
    assert tool_export("_FusedMatMul") == "_fusedMatMulConfig"
    assert index.kernel_configs("webgl")["LRN"] == ("LRN", "LRNConfig")
    assert index.kernel_configs("webgl")["FusedBatchNorm"] == ("BatchNorm", "batchNormConfig")
    assert index.kernel_configs("cpu")["Conv2D"] == ("Conv2D", tool_export("Conv2D"))
    model = graph("LRN", "FusedBatchNormV3")
    spec = rb.spec(rb.Request(VERSION, "wechat"), [("graph", model)], packages)
    assert ("webgl", "LRN", "LRN", "LRNConfig") in spec.renamed
    assert ("cpu", "LRN", "LRN", "LRNConfig") in spec.renamed
    assert ("cpu", "FusedBatchNorm", "BatchNorm", "batchNormConfig") in spec.renamed
    assert "LRN" not in spec.kernels and "FusedBatchNorm" not in spec.kernels
    entry = rb.entry(spec)
    assert (
        "import { LRNConfig as LRN_webgl } from '@tensorflow/tfjs-backend-webgl/dist/kernels/LRN';"
        in entry
    )
    assert "registerRenamedKernel(LRN_webgl);" in entry


# --- the file ---------------------------------------------------------------------------------


def _node_keys(code: bytes, fmt: str, tmp: Path) -> dict[str, Any]:
    file = tmp / "runtime.js"
    file.write_bytes(code)
    script = (
        "const m = require(process.argv[1]);"
        "console.log(JSON.stringify({tf: Object.keys(m.tf).sort(), top: Object.keys(m).sort(),"
        " webgl: Object.keys(m.webgl || {}).sort(),"
        " argMax: m.tf.argMax(m.tf.tensor([1, 3, 2])).dataSync()[0]}));"
        if fmt == "cjs"
        else "globalThis.require = require;"
        "require('vm').runInThisContext(require('fs').readFileSync(process.argv[1], 'utf8'));"
        "console.log(JSON.stringify({tf: Object.keys(tf).sort(), top: [], webgl: [],"
        " argMax: tf.argMax(tf.tensor([1, 3, 2])).dataSync()[0]}));"
    )
    proc = subprocess.run(
        ["node", "-e", script, str(file)], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_wechat_runtime_exports_the_fixed_api(packages: Path, tmp_path: Path) -> None:
    spec = rb.spec(rb.Request(VERSION, "wechat"), [("layers", dense_model())], packages)
    built = rb.build(spec, lambda: packages, Cache(tmp_path / "cache"))
    assert built.code.startswith(b"/* TensorFlow.js 3.21.0 (Apache-2.0")
    keys = _node_keys(built.code, "cjs", tmp_path)
    assert keys["top"] == ["fetchWechat", "tf", "webgl"]
    assert keys["tf"] == sorted([*api.CORE, *api.OPS, *api.LAYERS, "version"])
    assert keys["webgl"] == sorted(api.WEBGL)
    assert keys["argMax"] == 1  # an op of the API runs, on the cpu backend in Node
    # Built once: the same spec comes from the cache, byte for byte.
    again = rb.build(spec, lambda: packages, Cache(tmp_path / "cache"), say=pytest.fail)
    assert again.code == built.code


def test_web_runtime_sets_tf_with_the_graph_api_only(packages: Path, tmp_path: Path) -> None:
    spec = rb.spec(rb.Request(VERSION, "web"), [("graph", graph("MatMul"))], packages)
    built = rb.build(spec, lambda: packages, Cache(tmp_path / "cache"))
    keys = _node_keys(built.code, "iife", tmp_path)
    assert keys["tf"] == sorted([*api.CORE, *api.OPS, *api.GRAPH, "version"])
    assert keys["argMax"] == 1


def test_a_kernel_left_out_fails_verification_naming_it_and_the_model(
    packages: Path, tmp_path: Path
) -> None:
    """Without Concat, a batch of 2 runs; the same rows in batches of one catch it."""
    doc = dense_model()
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(doc))
    weights = np.arange(8, dtype="<f4") / 8
    (folder / "group1-shard1of1.bin").write_bytes(weights.tobytes())
    spec = rb.spec(rb.Request(VERSION, "wechat"), [("layers", doc)], packages)
    lacking = dataclasses.replace(spec, kernels=tuple(k for k in spec.kernels if k != "Concat"))
    check = Check(
        name="dense",
        model_json=folder / "model.json",
        format="layers",
        inputs=(("x", np.ones((2, 3), dtype=np.float32)),),
        reference=None,
        source_json=folder / "model.json",
        other_batch=True,
    )
    good = rb.build(spec, lambda: packages, Cache(tmp_path / "cache"))
    rt = Runtime(VERSION, good.id, good.label, good.code, "cjs")
    (measured,) = verify([check], rt).values()
    assert measured.max_abs_error == 0.0 and measured.rows == 2

    bad = rb.build(lacking, lambda: packages, Cache(tmp_path / "cache"))
    rt = Runtime(VERSION, bad.id, bad.label, bad.code, "cjs")
    with pytest.raises(VerifyError) as caught:
        verify([check], rt)
    assert caught.value.problems == (
        'model "dense": the bundle\'s tfjs 3.21.0 runtime (wechat) lacks the kernel '
        '"Concat", which it runs in batches of one row; the bundler left it out of the file: '
        "please report this bug",
    )


def test_the_spec_key_follows_the_topologies_only() -> None:
    request = rb.Request(VERSION, "web")
    a, b = ("graph", graph("MatMul")), ("layers", dense_model())
    key = rb.spec_key(request, [a, b])
    assert rb.spec_key(request, [b, a, a]) == key, "order and repeats change nothing"
    quantized = ("graph", {**graph("MatMul"), "weightsManifest": [{"paths": ["q.bin"]}]})
    assert rb.spec_key(request, [quantized, b]) == key, "weights change nothing"
    assert rb.spec_key(request, [("graph", graph("Conv2D")), b]) != key
    assert rb.spec_key(rb.Request(VERSION, "wechat"), [a, b]) != key
