"""`bundler init`: a starter manifest and a tiny model, so that `bundler build` works at once.

The model is a TensorFlow.js LayersModel written with numpy (a dense layer from 4 numbers
to 3 classes), so `init` and the first build need no TensorFlow at all.

Without an appid, the manifest gets the tourist appid under a loud PLACEHOLDER comment: it
still builds (every build warns), and it opens in WeChat DevTools, where only tfjsPlugin fails;
an invented appid would pass the manifest's check and fail in DevTools with no word from us.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bundler import limits, manifest
from bundler.errors import BundlerError
from bundler.models import weights
from bundler.render import render

MODEL_DIR = "models/starter"


def check_free(folder: Path) -> None:
    """Raise BundlerError if `folder` already holds what `init` would write."""
    for existing in (folder / manifest.DEFAULT_MANIFEST, folder / MODEL_DIR):
        if existing.exists():
            raise BundlerError(
                f"{existing} already exists; `bundler init` writes only into a folder "
                "without a bundle.toml or models/starter"
            )


def is_placeholder(appid: str | None) -> bool:
    """True when `appid` leaves the manifest with the tourist appid, a placeholder."""
    return appid is None or appid == limits.TOURIST_APPID


def write(folder: Path, appid: str | None = None) -> list[Path]:
    """Write bundle.toml and models/starter/ into `folder`; return the paths written.

    `appid` is the mini-program's; None (or the tourist appid) writes the placeholder.
    """
    if appid is not None and (problem := manifest.appid_problem(appid)) is not None:
        raise BundlerError(problem)
    check_free(folder)
    target = folder / manifest.DEFAULT_MANIFEST
    model_dir = folder / MODEL_DIR
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
    text = render(
        "init/bundle.toml.j2",
        name=name,
        source=f"{MODEL_DIR}/model.json",
        appid=appid,
        placeholder=is_placeholder(appid),
        tourist=limits.TOURIST_APPID,
        provider=limits.TFJS_PLUGIN_PROVIDER,
        console=limits.PLUGIN_CONSOLE,
    )
    target.write_text(text, encoding="utf-8")
    return [target, model_dir / "model.json"]
