"""ModelArtifacts: folders named by the bytes written; the record targets see; the registry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bundler import manifest, starter, targets
from bundler.models import stage
from bundler.models.artifacts import (
    HASH_LENGTH,
    content_hash,
    tensor_specs,
)


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


# --- content_hash ----------------------------------------------------------------------------


def test_content_hash_is_short_hex_and_ignores_the_order_of_files() -> None:
    files = {"model.json": b"{}", "group1-shard1of1.bin": b"\x00\x01"}
    forward = content_hash(digests(files))
    backward = content_hash(digests(dict(reversed(files.items()))))
    assert forward == backward
    assert len(forward) == HASH_LENGTH and int(forward, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"group1-shard1of1.bin": b"\x00\x02"},  # one weight's last bits
        {"group1-shard1of1.bin.br": b"other brotli"},  # another brotli quality
        {"model.json": b'{"a":1}'},
        {"group1-shard2of2.bin": b""},  # one more file
    ],
    ids=["shard-bits", "brotli-copy", "model-json", "extra-file"],
)
def test_content_hash_changes_with_any_byte_of_any_file(change: dict[str, bytes]) -> None:
    files = {"model.json": b"{}", "group1-shard1of1.bin": b"\x00\x01"}
    files["group1-shard1of1.bin.br"] = b"brotli"
    assert content_hash(digests({**files, **change})) != content_hash(digests(files))


def test_content_hash_tells_a_renamed_file_from_the_same_bytes() -> None:
    assert content_hash({"a.bin": "00"}) != content_hash({"b.bin": "00"})


# --- the folder of a built model --------------------------------------------------------------


def starter_site(folder: Path, extra: str = "") -> manifest.Config:
    """`bundler init`'s model (a tfjs LayersModel: no TensorFlow), unverified (no Node)."""
    starter.write(folder)
    path = folder / manifest.DEFAULT_MANIFEST
    text = path.read_text().replace('quantize = "none"', f'quantize = "none"\n{extra}')
    path.write_text(text.replace("[project]\n", "[project]\nverify = false\n"))
    return manifest.load(path)


def built(config: manifest.Config) -> tuple[str, dict[str, bytes]]:
    loaded = stage.load(config, lambda _: None)
    [model] = stage.artifacts(config, loaded)
    return model.hash, model.files


def test_equal_bytes_from_other_inputs_get_the_same_folder(tmp_path: Path) -> None:
    # A shard cap larger than the model changes the build's fingerprint, not its bytes.
    plain_hash, plain_files = built(starter_site(tmp_path / "plain"))
    capped = starter_site(tmp_path / "capped", "shard_bytes = 1000000")
    capped_hash, capped_files = built(capped)
    assert capped_files == plain_files
    assert capped_hash == plain_hash


def test_other_weight_bits_get_another_folder(tmp_path: Path) -> None:
    config = starter_site(tmp_path / "site")
    before, files = built(config)
    shard = tmp_path / "site" / starter.MODEL_DIR / "group1-shard1of1.bin"
    weights = np.frombuffer(shard.read_bytes(), dtype="<u4").copy()
    weights[0] ^= 1  # the lowest mantissa bit of one float32, as another CPU may round it
    shard.write_bytes(weights.tobytes())
    after, changed = built(manifest.load(config.path))
    assert changed["group1-shard1of1.bin"] != files["group1-shard1of1.bin"]
    assert after != before


def test_artifacts_carry_what_a_target_needs(tmp_path: Path) -> None:
    config = starter_site(tmp_path)
    [model] = stage.artifacts(config, stage.load(config, lambda _: None))
    assert model.name == "starter" and model.format == "layers"
    assert list(model.files) == [
        "model.json",
        "model.json.br",
        "group1-shard1of1.bin",
        "group1-shard1of1.bin.br",
    ]
    assert json.loads(model.model_json) == model.doc
    assert model.weight_bytes == 4 * (4 * 3 + 3) and model.params == 15
    assert [(s.name, s.shape, s.dtype) for s in model.inputs] == [("dense", (None, 4), "float32")]
    assert [s.name for s in model.outputs] == ["dense"]
    [(name, array)] = model.verify_inputs
    assert name == "dense" and array.shape[1:] == (4,)
    assert model.errors == {}  # not verified


# --- tensor specs ----------------------------------------------------------------------------


def test_graph_specs_follow_the_signature_and_reference_shapes() -> None:
    doc = {
        "format": "graph-model",
        "modelTopology": {},
        "signature": {
            "inputs": {
                "image": {
                    "name": "image:0",
                    "dtype": "DT_FLOAT",
                    "tensorShape": {"dim": [{"size": "-1"}, {"size": "8"}]},
                }
            },
            "outputs": {"probs": {"name": "Identity:0"}},
        },
    }
    inputs, outputs = tensor_specs(doc, (np.zeros((2, 3), np.float32),))
    assert [(s.name, s.shape, s.dtype) for s in inputs] == [("image", (-1, 8), "float32")]
    assert inputs[0].example_shape() == [1, 8]
    assert [(s.name, s.shape) for s in outputs] == [("Identity", (None, 3))]
    _, unknown = tensor_specs(doc, ())
    assert unknown[0].shape is None


# --- the target registry ---------------------------------------------------------------------


@pytest.mark.parametrize("name", targets.NAMES)
def test_every_target_name_is_a_plugin_of_that_name(name: str) -> None:
    target = targets.get(name)
    assert target.name == name
    for method in ("shard_budget", "tfjs_version", "runtimes", "render"):
        assert callable(getattr(target, method))


def test_an_unknown_target_says_which_exist() -> None:
    with pytest.raises(KeyError, match="targets: wechat, web"):
        targets.get("android")
