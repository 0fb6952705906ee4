"""Shared fixtures: small real models of every input kind, made once per session.

The models are tiny, with random non-zero biases and, for BatchNorm, moving statistics
calibrated on the inputs verification uses, so that a dropped, misaligned or wrongly
quantized weight shows in the outputs. Every model ends in a softmax, so the error bounds
of the end-to-end tests mean the same thing for all of them.
"""

from __future__ import annotations

import os

# Before anything imports TensorFlow: tensorflow_decision_forests (pulled in by tensorflowjs)
# otherwise tries IPython for a welcome banner when stdout is captured, and TensorFlow's C++
# logs would flood the captured output.
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Tests that run node or npm (tfjs verification, the wechat target, the web target's local
# tf.min.js, the node scripts under tests/) carry this marker; the others run without Node.
# A marked test is never skipped: without node and npm it fails, since nothing else proves
# the bundle loads in tfjs.
needs_node = pytest.mark.needs_node


def _missing_node_tools() -> list[str]:
    return [tool for tool in ("node", "npm") if shutil.which(tool) is None]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a needs_node test before its fixtures run when node or npm is not on PATH."""
    if item.get_closest_marker("needs_node") is None:
        return
    missing = _missing_node_tools()
    if missing:
        pytest.fail(
            f"needs {' and '.join(missing)} on PATH (Node.js 18+): install "
            f"{'it' if len(missing) == 1 else 'them'}, or deselect with -m 'not needs_node'",
            pytrace=False,
        )


@dataclass(frozen=True)
class SourceModels:
    """Paths of the session's source models, one per input kind the bundler reads."""

    root: Path
    k2_mlp_h5: Path  # tf_keras, Dense → Dense(softmax)
    k2_cnn_h5: Path  # tf_keras, Conv2D → BatchNorm → Flatten → Dense(softmax)
    k3_mlp_h5: Path  # Keras 3, legacy .h5
    k3_cnn_keras: Path  # Keras 3, .keras
    saved_model: Path  # Keras 3 model.export() of the CNN
    tfjs_graph: Path  # model.json of the tf_keras CNN as a tfjs GraphModel
    tfjs_layers: Path  # model.json of the tf_keras CNN as a tfjs LayersModel


@pytest.fixture(scope="session")
def source_models(tmp_path_factory: pytest.TempPathFactory) -> SourceModels:
    """Make every source model once; TensorFlow loads here, in the test process."""
    import keras
    import tf_keras
    from tensorflowjs.converters import keras_h5_conversion
    from tensorflowjs.converters import tf_saved_model_conversion_v2 as tfsm

    root = tmp_path_factory.mktemp("source-models")
    rng = np.random.default_rng(20261122)
    k2_mlp, k2_cnn = _mlp(tf_keras, rng), _cnn(tf_keras, rng)
    k3_mlp, k3_cnn = _mlp(keras, rng), _cnn(keras, rng)
    models = SourceModels(
        root=root,
        k2_mlp_h5=root / "k2_mlp.h5",
        k2_cnn_h5=root / "k2_cnn.h5",
        k3_mlp_h5=root / "k3_mlp.h5",
        k3_cnn_keras=root / "k3_cnn.keras",
        saved_model=root / "k3_cnn_saved_model",
        tfjs_graph=root / "tfjs_graph" / "model.json",
        tfjs_layers=root / "tfjs_layers" / "model.json",
    )
    k2_mlp.save(models.k2_mlp_h5)
    k2_cnn.save(models.k2_cnn_h5)
    _quietly(lambda: k3_mlp.save(models.k3_mlp_h5))
    k3_cnn.save(models.k3_cnn_keras)
    _quietly(lambda: k3_cnn.export(str(models.saved_model)))
    keras_h5_conversion.save_keras_model(k2_cnn, str(models.tfjs_layers.parent))
    tfsm.convert_keras_model_to_graph_model(k2_cnn, str(models.tfjs_graph.parent))
    return models


@pytest.fixture(scope="session")
def unsigned_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel of a tf.Module with a tf.function but no serving signature."""
    import tensorflow as tf

    class Scale(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable([[1.0], [2.0]])

        @tf.function
        def predict(self, x: Any) -> Any:
            return tf.matmul(x, self.w)

    module = Scale()
    module.predict(tf.ones([1, 2]))  # traced, yet not a signature: none was asked for
    path = tmp_path_factory.mktemp("unsigned") / "saved_model"
    tf.saved_model.save(module, str(path))
    assert not tf.saved_model.load(str(path)).signatures, "expected a SavedModel without signatures"
    return path


# --- running the bundler in a fresh interpreter -------------------------------------------------

_ISOLATED = textwrap.dedent(
    """
    import json, sys
    from bundler.cli import main
    code = main(sys.argv[2:])
    heavy = ("tensorflow", "tensorflowjs", "keras", "tf_keras")
    with open(sys.argv[1], "w") as f:
        json.dump({"code": code, "imported": sorted(m for m in heavy if m in sys.modules)}, f)
    """
)


@dataclass(frozen=True)
class Isolated:
    """What `bundler.cli.main` did in a fresh interpreter."""

    code: int
    imported: list[str]  # which of TensorFlow's top-level modules it imported
    stdout: str
    stderr: str


@pytest.fixture
def run_isolated(tmp_path: Path) -> Callable[[list[str]], Isolated]:
    """Run `bundler.cli.main(argv)` in a fresh Python; report its exit status and imports."""
    runs = iter(range(1_000_000))

    def run(argv: list[str]) -> Isolated:
        facts = tmp_path / f"isolated-{next(runs)}.json"
        proc = subprocess.run(
            [sys.executable, "-c", _ISOLATED, str(facts), *argv],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert facts.is_file(), f"the bundler did not return:\n{proc.stderr}"
        data = json.loads(facts.read_text())
        return Isolated(data["code"], data["imported"], proc.stdout, proc.stderr)

    return run


# --- the models --------------------------------------------------------------------------------


def _randomize(model: Any, rng: np.random.Generator) -> None:
    """Random weights at a scale that keeps softmax outputs away from 0 and 1."""
    values = []
    for w in model.weights:
        shape = tuple(int(d) for d in w.shape)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1]))
            values.append(rng.normal(0.0, 1.5 / np.sqrt(fan_in), shape))
        else:
            values.append(rng.normal(0.0, 0.3, shape))
    model.set_weights([v.astype(np.float32) for v in values])


def _calibrate(lib: Any, model: Any, rng: np.random.Generator) -> None:
    """Set BatchNorm's moving statistics to those of its real inputs."""
    bn = model.get_layer("bn")
    features = lib.Model(model.inputs, bn.input)
    # Uniform in [0, 1), as the bundler's verification inputs are.
    x = rng.random((256, *model.inputs[0].shape[1:]), dtype=np.float32)
    y = np.asarray(features(x))
    axes = tuple(range(y.ndim - 1))
    gamma = rng.uniform(0.5, 1.5, y.shape[-1])
    beta = rng.normal(0.0, 0.3, y.shape[-1])
    stats = (gamma, beta, y.mean(axes), y.var(axes) + 1e-3)
    bn.set_weights([s.astype(np.float32) for s in stats])


def _mlp(lib: Any, rng: np.random.Generator) -> Any:
    layers = lib.layers
    inp = lib.Input((8,), name="features")
    hidden = layers.Dense(16, activation="relu", name="hidden")(inp)
    out = layers.Dense(4, activation="softmax", name="probs")(hidden)
    model = lib.Model(inp, out)
    _randomize(model, rng)
    return model


def _cnn(lib: Any, rng: np.random.Generator) -> Any:
    layers = lib.layers
    inp = lib.Input((8, 8, 1), name="image")
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Flatten(name="flat")(x)
    out = layers.Dense(3, activation="softmax", name="probs")(x)
    model = lib.Model(inp, out)
    _randomize(model, rng)
    _calibrate(lib, model, rng)
    return model


def _quietly(action: Any) -> None:
    """Keras 3 prints to stdout on export and warns on .h5; keep that out of test output."""
    import contextlib
    import io
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        action()
