"""The Node side of verification: real tfjs 3.21 and 4.22 running converted tf_keras models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundler import runtimes
from bundler.errors import ToolError
from bundler.models.verify_node import NodeJob, run_in_tfjs
from bundler.runtimes import ensure_tfjs

VERSIONS = ("3.21.0", "4.22.0")

# Node and npm are required, never skipped: without them nothing proves the bundle loads.
needs_node = pytest.mark.needs_node


class Models:
    """Tiny converted models and the source model's answers."""

    def __init__(self, root: Path) -> None:
        # tensorflow_decision_forests (pulled in by tensorflowjs) imports IPython for a welcome
        # banner when stdout is captured, as under pytest.
        os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")
        import tf_keras
        from tensorflowjs.converters import converter, tf_saved_model_conversion_v2

        rng = np.random.default_rng(7)
        inp = tf_keras.Input((8,), name="x")
        hidden = tf_keras.layers.Dense(6, activation="relu", name="hidden")(inp)
        out = tf_keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
        model = tf_keras.Model(inp, out)
        # Non-zero biases too, so a dropped or misaligned weight shows in the outputs.
        model.set_weights(
            [rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()]
        )
        h5 = root / "dense.h5"
        model.save(h5)
        self.layers_json = root / "layers" / "model.json"
        self.graph_json = root / "graph" / "model.json"
        converter.dispatch_keras_h5_to_tfjs_layers_model_conversion(
            str(h5), str(self.layers_json.parent)
        )
        tf_saved_model_conversion_v2.convert_keras_model_to_graph_model(
            model, str(self.graph_json.parent)
        )
        self.x = rng.normal(size=(5, 8)).astype(np.float32)
        self.expected = np.asarray(model(self.x), dtype=np.float32)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("verify-node-models"))


@pytest.fixture(scope="session")
def tfjs_installed() -> dict[str, Path]:
    return {version: ensure_tfjs(version) for version in VERSIONS}


def _copy_model(src: Path, dest: Path) -> tuple[Path, dict[str, Any]]:
    shutil.copytree(src.parent, dest)
    model_json = dest / "model.json"
    return model_json, json.loads(model_json.read_text())


@pytest.mark.slow
@needs_node
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("fmt", ["graph", "layers"])
def test_outputs_match_source_model(
    models: Models, tfjs_installed: dict[str, Path], version: str, fmt: str
) -> None:
    model_json = models.graph_json if fmt == "graph" else models.layers_json
    [result] = run_in_tfjs([NodeJob("dense", model_json, fmt, (("x", models.x),))], version)
    assert result.error is None, result.error
    assert result.outputs is not None
    [out] = result.outputs
    assert out.dtype == np.float32
    assert out.shape == models.expected.shape
    np.testing.assert_allclose(out, models.expected, atol=1e-5, rtol=0)
    assert result.load_ms > 0 and result.predict_ms > 0


@pytest.mark.slow
@needs_node
@pytest.mark.parametrize("version", VERSIONS)
def test_failures_are_per_model(
    models: Models, tfjs_installed: dict[str, Path], tmp_path: Path, version: str
) -> None:
    fake_op_json, graph = _copy_model(models.graph_json, tmp_path / "fake-op")
    node = next(
        n for n in graph["modelTopology"]["node"] if n["op"] not in {"Const", "Placeholder"}
    )
    node["op"] = "BundlerFakeOp"
    fake_op_json.write_text(json.dumps(graph))

    fake_layer_json, layers = _copy_model(models.layers_json, tmp_path / "fake-layer")
    config = layers["modelTopology"]["model_config"]["config"]
    next(layer for layer in config["layers"] if layer["name"] == "hidden")["class_name"] = (
        "BundlerFakeLayer"
    )
    fake_layer_json.write_text(json.dumps(layers))

    missing_json, graph = _copy_model(models.graph_json, tmp_path / "missing-shard")
    graph["weightsManifest"][0]["paths"] = ["group1-shard1of1-gone"]
    missing_json.write_text(json.dumps(graph))

    # A name the model does not know is still fed positionally to a one-input model.
    x = (("not_the_input_name", models.x),)
    results = run_in_tfjs(
        [
            NodeJob("fake-op", fake_op_json, "graph", x),
            NodeJob("fake-layer", fake_layer_json, "layers", x),
            NodeJob("missing", missing_json, "graph", x),
            NodeJob("good", models.graph_json, "graph", x),
        ],
        version,
    )
    by_id = {r.id: r for r in results}
    assert [r.id for r in results] == ["fake-op", "fake-layer", "missing", "good"]

    fake_op = by_id["fake-op"]
    assert not fake_op.ok and fake_op.outputs is None
    assert fake_op.unsupported_op == "BundlerFakeOp"
    assert fake_op.unsupported_layer is None

    fake_layer = by_id["fake-layer"]
    assert fake_layer.stage == "load"
    assert fake_layer.unsupported_layer == "BundlerFakeLayer"
    assert fake_layer.unsupported_op is None

    missing = by_id["missing"]
    assert missing.stage == "load"
    assert missing.error is not None and "group1-shard1of1-gone" in missing.error
    assert missing.unsupported_op is None and missing.unsupported_layer is None

    good = by_id["good"]
    assert good.ok and good.outputs is not None
    np.testing.assert_allclose(good.outputs[0], models.expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@needs_node
def test_shards_are_joined_in_manifest_order(
    models: Models, tfjs_installed: dict[str, Path], tmp_path: Path
) -> None:
    model_json, graph = _copy_model(models.graph_json, tmp_path / "split")
    [group] = graph["weightsManifest"]
    data = (model_json.parent / group["paths"][0]).read_bytes()
    cut = len(data) // 3
    # Odd cut points and one name without an extension, as the bundler's hashed names allow.
    (model_json.parent / "a.bin").write_bytes(data[:cut])
    (model_json.parent / "b").write_bytes(data[cut : 2 * cut + 1])
    (model_json.parent / "c.bin").write_bytes(data[2 * cut + 1 :])
    group["paths"] = ["a.bin", "b", "c.bin"]
    model_json.write_text(json.dumps(graph))

    [result] = run_in_tfjs([NodeJob("split", model_json, "graph", (("x", models.x),))], "3.21.0")
    assert result.outputs is not None, result.error
    np.testing.assert_allclose(result.outputs[0], models.expected, atol=1e-5, rtol=0)


@pytest.mark.slow
@needs_node
@pytest.mark.parametrize("version", VERSIONS)
def test_int32_input_and_several_outputs(
    tfjs_installed: dict[str, Path], tmp_path: Path, version: str
) -> None:
    """A hand-written graph: int32 input cast to float, two outputs in model.outputs order."""
    topology = {
        "node": [
            {"name": "ids", "op": "Placeholder", "attr": {"dtype": {"type": "DT_INT32"}}},
            {
                "name": "f",
                "op": "Cast",
                "input": ["ids"],
                "attr": {"SrcT": {"type": "DT_INT32"}, "DstT": {"type": "DT_FLOAT"}},
            },
            {"name": "w", "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}},
            {"name": "scaled", "op": "Mul", "input": ["f", "w"], "attr": {}},
            {"name": "neg", "op": "Neg", "input": ["f"], "attr": {}},
        ],
        "versions": {"producer": 1},
    }
    manifest = [{"paths": ["w"], "weights": [{"name": "w", "shape": [], "dtype": "float32"}]}]
    model_json = tmp_path / "model.json"
    model_json.write_text(
        json.dumps(
            {
                "format": "graph-model",
                "modelTopology": topology,
                "weightsManifest": manifest,
                "signature": {
                    "inputs": {"ids:0": {"name": "ids:0"}},
                    "outputs": {"scaled:0": {"name": "scaled:0"}, "neg:0": {"name": "neg:0"}},
                },
            }
        )
    )
    (tmp_path / "w").write_bytes(np.array([1.5], dtype="<f4").tobytes())
    ids = np.array([[1, 2, 3]], dtype=np.int64)

    [result] = run_in_tfjs([NodeJob("two", model_json, "graph", (("ids", ids),))], version)
    assert result.outputs is not None, result.error
    scaled, neg = result.outputs
    np.testing.assert_array_equal(scaled, [[1.5, 3.0, 4.5]])
    np.testing.assert_array_equal(neg, [[-1.0, -2.0, -3.0]])


@pytest.mark.slow
@needs_node
def test_second_ensure_runs_no_subprocess(
    tfjs_installed: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"subprocess.run called: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert ensure_tfjs("3.21.0") == tfjs_installed["3.21.0"]
    package = tfjs_installed["3.21.0"] / "node_modules/@tensorflow/tfjs/package.json"
    assert json.loads(package.read_text())["version"] == "3.21.0"


@pytest.mark.parametrize("version", ["3.21.0; rm -rf /", "latest", "../3.21.0", "3.21", ""])
def test_ensure_rejects_versions_that_are_not_semver(
    version: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"subprocess.run called: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setenv("BUNDLER_NODE_CACHE", str(tmp_path))
    with pytest.raises(ToolError, match="not a version number"):
        ensure_tfjs(version)
    assert list(tmp_path.iterdir()) == []


def test_missing_node_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BUNDLER_NODE_CACHE", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ToolError, match=r"node was not found on PATH.*verify = false"):
        ensure_tfjs("3.21.0")
    with pytest.raises(ToolError, match="node was not found on PATH"):
        run_in_tfjs([NodeJob("m", tmp_path / "model.json", "graph", ())], "3.21.0")


def test_a_target_install_without_node_names_what_it_installs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # verify = false does not help a target that ships or measures npm packages.
    monkeypatch.setenv("BUNDLER_NODE_CACHE", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ToolError) as caught:
        runtimes.ensure_packages(
            "wechat-runtime-3.21.0", {"fetch-wechat": "0.0.3"}, purpose="the WeChat runtime"
        )
    assert str(caught.value) == (
        "node was not found on PATH: the bundler installs the WeChat runtime with npm on first "
        "use and needs Node.js 18 or newer with npm; install it (https://nodejs.org)"
    )


def test_npm_failure_reports_stderr_and_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BUNDLER_NODE_CACHE", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")

    def fake_npm(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[-1] == "@tensorflow/tfjs@9.9.9"
        return subprocess.CompletedProcess(cmd, 1, "", "npm error code ETARGET\nno such version")

    monkeypatch.setattr(subprocess, "run", fake_npm)
    with pytest.raises(ToolError, match=r"(?s)@tensorflow/tfjs@9\.9\.9.*no such version"):
        ensure_tfjs("9.9.9")
    # The half-made staging folder is gone and nothing claims to be installed.
    assert [p.name for p in tmp_path.iterdir()] == [".tfjs-9.9.9.lock"]


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BUNDLER_NODE_CACHE", str(tmp_path / "explicit"))
    assert runtimes.node_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("BUNDLER_NODE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtimes.node_cache_dir() == tmp_path / "xdg" / "model-bundler" / "node"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runtimes.node_cache_dir() == tmp_path / "home" / ".cache" / "model-bundler" / "node"


def _job(rows: int, chunk: int, name: str = "m", other_batch: bool = True) -> NodeJob:
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    return NodeJob(name, Path(f"{name}.json"), "graph", (("x", x),), other_batch, chunk)


def test_many_rows_are_split_over_processes_at_whole_chunks() -> None:
    from bundler.models.verify_node import _plan

    plan = _plan([_job(200, 32), _job(5, 32, "small"), _job(40, 0, "at-once")], 2)
    assert len(plan) == 2
    parts = {(job.id, index): job for process in plan for job, index in process}
    first, second = parts["m", 0], parts["m", 1]
    # 7 chunks of 32: 4 and 3, every predict call as in one process
    assert (len(first.inputs[0][1]), len(second.inputs[0][1])) == (128, 72)
    joined = np.concatenate([first.inputs[0][1], second.inputs[0][1]])
    np.testing.assert_array_equal(joined, _job(200, 32).inputs[0][1])
    assert first.other_batch and not second.other_batch
    # too few rows, or no chunks: whole, on the least loaded process
    assert ("small", 0) in parts and ("at-once", 0) in parts
    assert ("small", 1) not in parts and ("at-once", 1) not in parts
    alone = _job(200, 32)
    [[(job, index)]] = _plan([alone], 1)
    assert job is alone and index == 0
    # a fixed batch of 8 with 20 rows: parts of at least 16 rows are not possible
    assert len(_plan([_job(20, 8)], 2)) == 1


@pytest.mark.slow
@needs_node
@pytest.mark.parametrize("fmt", ["graph", "layers"])
def test_split_rows_give_the_same_bits_as_one_process(
    models: Models, tfjs_installed: dict[str, Path], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_json = models.graph_json if fmt == "graph" else models.layers_json
    x = np.random.default_rng(3).normal(size=(100, 8)).astype(np.float32)
    job = NodeJob("dense", model_json, fmt, (("x", x),), True, 16, fmt == "layers")
    results = {}
    for jobs in ("1", "3"):
        monkeypatch.setenv("BUNDLER_JOBS", jobs)
        [results[jobs]] = run_in_tfjs([job], "4.22.0")
    one, three = results["1"], results["3"]
    assert one.outputs is not None and three.outputs is not None
    assert one.outputs[0].shape == three.outputs[0].shape == (100, 3)
    assert one.outputs[0].tobytes() == three.outputs[0].tobytes()
    assert (one.batch_rows, one.batch_diff) == (three.batch_rows, three.batch_diff)
