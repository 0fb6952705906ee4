"""Write the benchmark's source models into a folder (run by bench/run.py, not timed).

Every net is built with tf_keras (Keras 2), so that `tensorflowjs_converter --input_format=keras`
can read its `.h5` (Keras 3 `.h5` files fail in the converter's tf_keras loader), and saved
twice: as `<name>.h5` and as a SavedModel folder `<name>_savedmodel/`.

Weights are random (no download), made fit for measuring fidelity (see shared/BASELINE.md):
- every bias and BatchNorm beta is non-zero (the graph converter drops all-zero biases) and
  every BatchNorm gamma is random around 1;
- BatchNorm moving statistics are calibrated on a random batch: with momentum 0, one forward
  pass in training mode sets each layer's moving mean and variance to its batch statistics
  (default statistics collapse MobileNetV2's output to exactly 1/classes).

Usage: python bench/prepare.py OUT_DIR   (does nothing when OUT_DIR already holds this version)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")

# Bump when the models change: bench/run.py rebuilds them when the stamp differs.
PREPARE_VERSION = 1
STAMP = "models.json"
SEED = 1234
CALIBRATION_BATCH = 16

# name → how to build it
NETS: dict[str, dict[str, Any]] = {
    "mnv2_100": {"kind": "mobilenet_v2", "alpha": 1.0},
    "mnv2_035": {"kind": "mobilenet_v2", "alpha": 0.35},
    "mlp": {"kind": "mlp", "units": [32, 64, 10]},
}


def _build(spec: dict[str, Any]) -> Any:
    import tf_keras

    if spec["kind"] == "mobilenet_v2":
        return tf_keras.applications.MobileNetV2(
            input_shape=(224, 224, 3), alpha=spec["alpha"], weights=None, classes=1000
        )
    n_in, hidden, n_out = spec["units"]
    return tf_keras.Sequential(
        [
            tf_keras.Input(shape=(n_in,), name="features"),
            tf_keras.layers.Dense(hidden, activation="relu", name="hidden"),
            tf_keras.layers.Dense(n_out, activation="softmax", name="scores"),
        ],
        name="mlp",
    )


def _randomize(model: Any, rng: np.random.Generator) -> None:
    """Non-zero biases and betas, gammas around 1; kernels keep their random init."""
    import tf_keras

    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.1, layer.beta.shape).astype(np.float32))
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias.assign(rng.normal(0.0, 0.1, bias.shape).astype(np.float32))


def _calibrate(model: Any, rng: np.random.Generator) -> None:
    """Set every BatchNorm's moving statistics to those of one random batch."""
    import tf_keras

    bns = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    if not bns:
        return
    shape = (CALIBRATION_BATCH, *model.input_shape[1:])
    batch = rng.random(shape, dtype=np.float32)
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(batch, training=True)
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
        if float(np.abs(bn.moving_mean.numpy()).max()) == 0.0:
            raise RuntimeError(f"BatchNorm {bn.name} was not calibrated")


def _check(model: Any, rng: np.random.Generator) -> dict[str, float]:
    """The outputs must depend on the input (not collapsed to a constant)."""
    shape = (4, *model.input_shape[1:])
    out = np.asarray(model(rng.random(shape, dtype=np.float32), training=False))
    spread = float(out.std(axis=0).max())
    if spread < 1e-4:
        raise RuntimeError(f"{model.name}: outputs do not depend on the input (std {spread:.2g})")
    return {"output_std_over_batch": spread, "output_max": float(out.max())}


def prepare(out: Path) -> dict[str, Any]:
    """Build, randomize, calibrate and save every net; return what was written."""
    import tensorflow as tf
    import tf_keras

    shutil.rmtree(out, ignore_errors=True)  # only ever holds what this script wrote
    out.mkdir(parents=True)
    written: dict[str, Any] = {}
    for i, (name, spec) in enumerate(NETS.items()):
        tf_keras.utils.set_random_seed(SEED + i)
        rng = np.random.default_rng(SEED + i)
        model = _build(spec)
        _randomize(model, rng)
        _calibrate(model, rng)
        facts = _check(model, rng)
        h5 = out / f"{name}.h5"
        saved_model = out / f"{name}_savedmodel"
        model.save(h5, include_optimizer=False)
        model.save(saved_model, include_optimizer=False, save_format="tf")
        written[name] = {
            **spec,
            "params": int(model.count_params()),
            "h5": h5.name,
            "saved_model": saved_model.name,
            **facts,
        }
        print(f"prepared {name}: {model.count_params():,} params, {facts}", flush=True)
        tf_keras.backend.clear_session()
    stamp = {
        "version": PREPARE_VERSION,
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "models": written,
    }
    (out / STAMP).write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    return stamp


def current(out: Path) -> bool:
    """True when `out` holds the models of this PREPARE_VERSION."""
    try:
        stamp = json.loads((out / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stamp.get("version") != PREPARE_VERSION or set(stamp.get("models", {})) != set(NETS):
        return False
    for facts in stamp["models"].values():
        if not (out / facts["h5"]).is_file():
            return False
        if not (out / facts["saved_model"] / "saved_model.pb").is_file():
            return False
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/prepare.py OUT_DIR")
    target = Path(sys.argv[1])
    if current(target):
        print(f"reusing the models in {target}", flush=True)
    else:
        prepare(target)
