"""`bundler init`: a starter manifest and a tiny model, so that `bundler build` works at once.

The model is a TensorFlow.js LayersModel written with numpy (a dense layer from 4 numbers
to 3 classes), so `init` and the first build need no TensorFlow at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bundler import manifest
from bundler.errors import BundlerError
from bundler.models import weights
from bundler.render import render

MODEL_DIR = "models/starter"


def write(folder: Path) -> list[Path]:
    """Write bundle.toml and models/starter/ into `folder`; return the paths written."""
    target = folder / manifest.DEFAULT_MANIFEST
    model_dir = folder / MODEL_DIR
    for existing in (target, model_dir):
        if existing.exists():
            raise BundlerError(
                f"{existing} already exists; `bundler init` writes only into a folder "
                "without a bundle.toml or models/starter"
            )
    model_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    kernel = rng.normal(0.0, 0.5, size=(4, 3)).astype(np.float32)
    bias = np.array([0.1, -0.2, 0.05], dtype=np.float32)
    packed = weights.pack(
        [[weights.Weight("dense/kernel", kernel), weights.Weight("dense/bias", bias)]], (), 1 << 20
    )
    for name, data in packed.shards:
        (model_dir / name).write_bytes(data)
    layer = {
        "class_name": "Dense",
        "config": {
            "name": "dense",
            "units": 3,
            "activation": "softmax",
            "use_bias": True,
            "batch_input_shape": [None, 4],
            "dtype": "float32",
            "trainable": True,
            "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}},
        },
    }
    model_json = {
        "format": "layers-model",
        "generatedBy": "model-bundler init",
        "convertedBy": None,
        "modelTopology": {
            "keras_version": "2.19.0",
            "backend": "tensorflow",
            "model_config": {
                "class_name": "Sequential",
                "config": {"name": "starter", "layers": [layer]},
            },
        },
        "weightsManifest": packed.manifest,
    }
    (model_dir / "model.json").write_text(json.dumps(model_json, indent=1) + "\n")
    name = folder.resolve().name or "starter"
    target.write_text(render("init/bundle.toml.j2", name=name, source=f"{MODEL_DIR}/model.json"))
    return [target, model_dir / "model.json"]
