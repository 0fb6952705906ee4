"""artifacts: canonical model.json, and shards cut so that each brotli copy fits the cap."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import brotli
import numpy as np
import pytest

from bundler.errors import PlanError
from bundler.manifest import Quantize
from bundler.models import pack
from bundler.models.convert import Converted
from bundler.models.weights import Weight

CAP = 8192
NONE = Quantize("none")


def random_bits(rng: np.random.Generator, size: int) -> np.ndarray[Any, Any]:
    """float32 made of random bits: unlike normal values (whose exponent bytes repeat),
    brotli cannot shrink them at all."""
    return rng.integers(0, 2**32, size=size, dtype=np.uint32).view(np.float32)


def converted(size: int = 12_500, seed: int = 3, incompressible: bool = True) -> Converted:
    """A graph model with ~50 KB of float32 weights."""
    rng = np.random.default_rng(seed)
    if incompressible:
        kernel, bias = random_bits(rng, size), random_bits(rng, 10)
    else:
        kernel = rng.normal(size=(size,)).astype(np.float32)
        bias = rng.normal(size=(10,)).astype(np.float32)
    groups = [[Weight("dense/kernel", kernel), Weight("dense/bias", bias)]]
    doc = {
        "format": "graph-model",
        "modelTopology": {"node": [{"name": "x", "op": "Placeholder", "attr": {"b": 1, "a": 2}}]},
        "signature": {"outputs": {"z": {"name": "z"}}, "inputs": {"y": {}, "x": {}}},
    }
    return Converted(doc, groups, (), None)


# --- canonical_json -------------------------------------------------------------------------


def test_canonical_json_sorts_keys_everywhere_and_drops_spaces() -> None:
    doc = {"b": 1, "a": {"d": [{"z": 1, "y": 2}], "c": None}, "é": "ü"}
    assert pack.canonical_json(doc) == (
        '{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1,"é":"ü"}'.encode()
    )


def test_canonical_json_keeps_the_signature_order() -> None:
    doc = {
        "signature": {"outputs": {"b": {"y": 1, "x": 2}, "a": {}}, "inputs": {"z": {}, "y": {}}},
        "modelTopology": {"node": [{"op": "Const", "name": "a"}]},
    }
    assert pack.canonical_json(doc) == (
        b'{"modelTopology":{"node":[{"name":"a","op":"Const"}]},'
        b'"signature":{"outputs":{"b":{"y":1,"x":2},"a":{}},"inputs":{"z":{},"y":{}}}}'
    )


def test_canonical_json_is_the_same_for_reordered_input() -> None:
    one = {"a": 1, "b": {"c": 2, "d": 3}}
    two = {"b": {"d": 3, "c": 2}, "a": 1}
    assert pack.canonical_json(one) == pack.canonical_json(two)


# --- build_files ----------------------------------------------------------------------------


def test_every_brotli_shard_fits_the_cap_for_incompressible_weights() -> None:
    files, packed = pack.build_files(converted(), NONE, CAP, 9)
    shard_names = [name for name, _ in packed.shards]
    count = len(shard_names)
    assert count > 50_000 // CAP
    assert shard_names == [f"group1-shard{k}of{count}.bin" for k in range(1, count + 1)]
    for name in shard_names:
        assert len(files[name + ".br"]) <= CAP, name
        # Brotli adds a few bytes of framing to these weights: the shards were cut smaller.
        assert len(files[name + ".br"]) > len(files[name]), name
        assert brotli.decompress(files[name + ".br"]) == files[name]
    assert sum(len(files[name]) for name in shard_names) == 4 * (12_500 + 10)


def test_files_are_model_json_first_then_each_shard_beside_its_brotli_copy() -> None:
    files, packed = pack.build_files(converted(), NONE, CAP, 9)
    expected = ["model.json", "model.json.br"]
    for name, _ in packed.shards:
        expected += [name, name + ".br"]
    assert list(files) == expected
    assert all(re.fullmatch(r"group1-shard\d+of\d+\.bin(\.br)?", n) for n in expected[2:])


def test_model_json_is_canonical_and_names_the_shards() -> None:
    files, packed = pack.build_files(converted(), NONE, CAP, 9)
    doc = json.loads(files["model.json"])
    assert doc["weightsManifest"] == packed.manifest
    assert doc["weightsManifest"][0]["paths"] == [name for name, _ in packed.shards]
    assert files["model.json"] == pack.canonical_json(doc)
    assert list(doc["signature"]["inputs"]) == ["y", "x"]
    assert brotli.decompress(files["model.json.br"]) == files["model.json"]


def test_same_input_gives_byte_identical_files() -> None:
    first, _ = pack.build_files(converted(), NONE, CAP, 9)
    second, _ = pack.build_files(converted(), NONE, CAP, 9)
    assert first == second
    assert list(first) == list(second)


def test_compressible_weights_are_cut_at_the_cap_before_brotli() -> None:
    zeros = Converted(
        {"format": "graph-model", "modelTopology": {"node": []}},
        [[Weight("w", np.zeros(10_000, np.float32))]],
        (),
        None,
    )
    _, packed = pack.build_files(zeros, NONE, CAP, 9)
    assert [len(data) for _, data in packed.shards] == [CAP] * 4 + [40_000 - 4 * CAP]


def test_quantized_shards_hold_the_quantized_bytes() -> None:
    uint8 = Quantize("uint8", (("uint8", ("*",)),))
    files, packed = pack.build_files(converted(incompressible=False), uint8, CAP, 9)
    assert packed.weight_bytes == 12_500 + 10
    assert all(len(files[name + ".br"]) <= CAP for name, _ in packed.shards)


def test_a_cap_no_shard_can_fit_is_a_plan_error() -> None:
    with pytest.raises(PlanError) as info:
        pack.build_files(converted(), NONE, 1024, 9)
    assert str(info.value) == "no shard size fits a brotli budget of 1024 bytes"


def test_internal_attributes_leave_graph_nodes_and_functions() -> None:
    shapes = {"list": {"shape": [{"dim": [{"size": "-3"}]}]}}
    doc = {
        "format": "graph-model",
        "modelTopology": {
            "node": [
                {"name": "a", "op": "_FusedMatMul", "attr": {"T": {}, "_input_shapes": shapes}}
            ],
            "library": {"function": [{"nodeDef": [{"name": "b", "attr": {"_class": {}, "x": 1}}]}]},
        },
    }
    converted_doc = Converted(doc, [[Weight("w", np.zeros(2, np.float32))]], (), None)
    files, _ = pack.build_files(converted_doc, NONE, CAP, 9)
    written = json.loads(files["model.json"])
    assert written["modelTopology"]["node"][0]["attr"] == {"T": {}}
    assert written["modelTopology"]["library"]["function"][0]["nodeDef"][0]["attr"] == {"x": 1}
    assert "_input_shapes" in doc["modelTopology"]["node"][0]["attr"]  # the input is untouched


def test_a_layers_model_keeps_its_config_as_it_is() -> None:
    doc = {"format": "layers-model", "modelTopology": {"_weird": 1, "node": [{"attr": {"_a": 1}}]}}
    assert pack.without_internal_attrs(doc) == doc


def test_a_quantized_tfjs_source_shipped_as_float32_is_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tfjs source stored as uint8 and built with quantize = "none" grows fourfold."""
    from bundler import build, manifest, starter

    starter.write(tmp_path)
    monkeypatch.chdir(tmp_path)
    text = (tmp_path / "bundle.toml").read_text()
    (tmp_path / "bundle.toml").write_text(text.replace('quantize = "none"', 'quantize = "uint8"'))
    config = manifest.load(tmp_path / "bundle.toml")
    config = dataclasses.replace(
        config, project=dataclasses.replace(config.project, verify=False, targets=("web",))
    )
    first = build.build(config)
    (folder,) = (tmp_path / "dist" / "models" / "starter").iterdir()
    shutil.copytree(folder, tmp_path / "models" / "u8")
    source = tmp_path / "models" / "u8" / "model.json"
    model = dataclasses.replace(
        config.models[0],
        quantize=manifest.Quantize("none"),
        source=source,
        input=dataclasses.replace(config.models[0].input, path=source),
    )
    again = build.build(dataclasses.replace(config, models=(model,)))
    warning = (
        'model "starter": its source stores uint8 weights, and quantize = "none" ships them as '
        'float32, several times the bytes; set quantize = "uint8" to keep them as they are'
    )
    assert warning in again.report.warnings
    assert warning not in first.report.warnings
