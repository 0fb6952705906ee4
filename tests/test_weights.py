"""weights.pack against tensorflowjs' own writer, and read_groups on what both write."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundler.errors import ModelError
from bundler.models import weights
from bundler.models.weights import Weight

# tensorflow_decision_forests (pulled in by tensorflowjs) prints a banner through IPython.
os.environ["TFDF_DISABLE_WELCOME_MESSAGE"] = "1"

# Small enough that the kernel spans two shards at every dtype (8192, 4096 or 2048 bytes).
SHARD_BYTES = 1500


def sample_groups() -> list[list[Weight]]:
    """Two groups: every kind of tensor the quantizer treats differently."""
    rng = np.random.default_rng(42)
    first = [
        Weight("dense/kernel", rng.normal(0.0, 0.7, size=(64, 32)).astype(np.float32)),
        Weight("dense/bias", rng.uniform(0.1, 2.0, size=(32,)).astype(np.float32)),
        Weight("const", np.full((3, 5), 0.25, dtype=np.float32)),
        Weight("step", rng.integers(-1000, 1000, size=(7,)).astype(np.int32)),
    ]
    second = [
        Weight("vocab", np.array(["a", "héllo", ""], dtype=object)),
        Weight("out/kernel", rng.normal(0.0, 0.1, size=(32, 3)).astype(np.float32)),
        Weight("negative", -rng.uniform(1.0, 3.0, size=(5,)).astype(np.float32)),
    ]
    return [first, second]


def tfjs_write(
    groups: list[list[Weight]], folder: Path, dtype_map: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], tuple[tuple[str, bytes], ...]]:
    """What tensorflowjs writes for the same weights: its manifest and its shard files."""
    from tensorflowjs import write_weights

    folder.mkdir()
    tfjs_groups = [[{"name": w.name, "data": w.array.copy()} for w in g] for g in groups]
    manifest = write_weights.write_weights(
        tfjs_groups,
        str(folder),
        shard_size_bytes=SHARD_BYTES,
        write_manifest=False,
        quantization_dtype_map=dtype_map,
    )
    shards = tuple(
        (name, (folder / name).read_bytes()) for group in manifest for name in group["paths"]
    )
    return manifest, shards


def as_json(manifest: list[dict[str, Any]]) -> Any:
    return json.loads(json.dumps(manifest))


def write_model(folder: Path, packed: weights.Packed) -> Path:
    """Write the shards and a model.json naming them; return the model.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in packed.shards:
        (folder / name).write_bytes(data)
    model_json = folder / "model.json"
    model_json.write_text(json.dumps({"weightsManifest": packed.manifest}))
    return model_json


def read_back(model_json: Path) -> dict[str, np.ndarray[Any, Any]]:
    manifest = json.loads(model_json.read_text())["weightsManifest"]
    groups = weights.read_groups(model_json, manifest)
    return {w.name: w.array for group in groups for w in group}


# --- the same bytes as tensorflowjs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ((("uint8", ("*",)),), {"uint8": True}),
        ((("uint16", ("*",)),), {"uint16": True}),
        ((("float16", ("*",)),), {"float16": True}),
        ((("float16", ("*",)), ("uint8", ("dense/*",))), {"uint8": ["dense/*"], "float16": True}),
        ((), None),
    ],
    ids=["uint8", "uint16", "float16", "uint8-dense-float16-rest", "none"],
)
def test_pack_writes_the_bytes_and_manifest_tensorflowjs_writes(
    tmp_path: Path, ours: tuple[tuple[str, tuple[str, ...]], ...], theirs: dict[str, Any] | None
) -> None:
    groups = sample_groups()
    packed = weights.pack(groups, ours, SHARD_BYTES)
    manifest, shards = tfjs_write(groups, tmp_path / "tfjs", theirs)

    assert [name for name, _ in packed.shards] == [name for name, _ in shards]
    for (name, data), (_, expected) in zip(packed.shards, shards, strict=True):
        assert data == expected, name
    assert packed.manifest == manifest
    assert as_json(packed.manifest) == as_json(manifest)
    # The kernel really is cut across shards.
    assert len(packed.manifest[0]["paths"]) > 1


def test_int32_weights_are_never_quantized() -> None:
    step = np.arange(-5, 5, dtype=np.int32)
    packed = weights.pack([[Weight("step", step)]], (("uint8", ("*",)),), SHARD_BYTES)
    assert packed.manifest[0]["weights"] == [{"name": "step", "shape": [10], "dtype": "int32"}]
    assert packed.shards == (("group1-shard1of1.bin", step.astype("<i4").tobytes()),)


def test_shards_are_named_per_group_and_cut_at_the_size() -> None:
    groups = [
        [Weight("a", np.zeros(1000, np.float32))],  # 4000 bytes: 3 shards of 1500
        [Weight("b", np.zeros(10, np.float32))],
    ]
    packed = weights.pack(groups, (), SHARD_BYTES)
    assert [(name, len(data)) for name, data in packed.shards] == [
        ("group1-shard1of3.bin", 1500),
        ("group1-shard2of3.bin", 1500),
        ("group1-shard3of3.bin", 1000),
        ("group2-shard1of1.bin", 40),
    ]
    assert packed.weight_bytes == 4040


def test_two_weights_with_one_name_are_refused() -> None:
    groups = [[Weight("w", np.zeros(2, np.float32))], [Weight("w", np.ones(2, np.float32))]]
    with pytest.raises(ModelError) as info:
        weights.pack(groups, (), SHARD_BYTES)
    assert str(info.value) == "two weights are both named 'w'"


# --- reading back ---------------------------------------------------------------------------


def test_read_groups_returns_unquantized_weights_exactly(tmp_path: Path) -> None:
    groups = sample_groups()
    model_json = write_model(tmp_path, weights.pack(groups, (), SHARD_BYTES))
    back = read_back(model_json)
    assert list(back) == [w.name for g in groups for w in g]
    for w in (w for g in groups for w in g if w.name != "vocab"):
        assert back[w.name].dtype == w.array.dtype, w.name
        np.testing.assert_array_equal(back[w.name], w.array, err_msg=w.name)
    assert back["vocab"].tolist() == [b"a", "héllo".encode(), b""]


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_read_groups_dequantizes_affine_weights_within_half_a_step(
    tmp_path: Path, dtype: str
) -> None:
    groups = sample_groups()
    packed = weights.pack(groups, ((dtype, ("*",)),), SHARD_BYTES)
    back = read_back(write_model(tmp_path, packed))
    entries = {e["name"]: e for g in packed.manifest for e in g["weights"]}
    for w in (w for g in groups for w in g if w.array.dtype == np.float32):
        quant = entries[w.name]["quantization"]
        assert quant["dtype"] == dtype
        assert back[w.name].dtype == np.float32
        assert back[w.name].shape == w.array.shape
        step = quant["scale"]
        assert np.max(np.abs(back[w.name] - w.array)) <= step / 2 + 1e-6, w.name
    # One value only: stored as zeros with the value as `min`, read back exactly.
    np.testing.assert_array_equal(back["const"], groups[0][2].array)
    # The int32 tensor was not quantized and comes back as it went in.
    np.testing.assert_array_equal(back["step"], groups[0][3].array)


def test_read_groups_keeps_zero_exact_under_uint8(tmp_path: Path) -> None:
    array = np.array([-1.0, 0.0, 0.3, 2.0], dtype=np.float32)
    packed = weights.pack([[Weight("w", array)]], (("uint8", ("*",)),), SHARD_BYTES)
    back = read_back(write_model(tmp_path, packed))
    assert back["w"][1] == 0.0


def test_read_groups_dequantizes_float16(tmp_path: Path) -> None:
    groups = sample_groups()
    packed = weights.pack(groups, (("float16", ("*",)),), SHARD_BYTES)
    back = read_back(write_model(tmp_path, packed))
    for w in (w for g in groups for w in g if w.array.dtype == np.float32):
        assert back[w.name].dtype == np.float32
        np.testing.assert_allclose(back[w.name], w.array, rtol=1e-3, atol=1e-4, err_msg=w.name)


def test_read_groups_reads_what_tensorflowjs_wrote(tmp_path: Path) -> None:
    groups = sample_groups()
    manifest, _ = tfjs_write(groups, tmp_path / "tfjs", {"uint8": True})
    model_json = tmp_path / "tfjs" / "model.json"
    model_json.write_text(json.dumps({"weightsManifest": manifest}))
    packed = weights.pack(groups, (("uint8", ("*",)),), SHARD_BYTES)
    ours = read_back(write_model(tmp_path / "ours", packed))
    theirs = read_back(model_json)
    assert list(theirs) == list(ours)
    for name in ours:
        np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)


# --- older files ----------------------------------------------------------------------------


def test_shard_files_without_bin_suffix_are_read(tmp_path: Path) -> None:
    groups = sample_groups()
    packed = weights.pack(groups, (), SHARD_BYTES)
    manifest = [
        {**g, "paths": [p.removesuffix(".bin") for p in g["paths"]]} for g in packed.manifest
    ]
    for name, data in packed.shards:
        (tmp_path / name.removesuffix(".bin")).write_bytes(data)
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps({"weightsManifest": manifest}))
    back = read_back(model_json)
    np.testing.assert_array_equal(back["dense/kernel"], groups[0][0].array)


def test_uint8_entry_without_original_dtype_is_read_as_its_own_dtype(tmp_path: Path) -> None:
    array = np.linspace(-1.0, 1.0, 50, dtype=np.float32)
    packed = weights.pack([[Weight("w", array)]], (("uint8", ("*",)),), SHARD_BYTES)
    del packed.manifest[0]["weights"][0]["quantization"]["original_dtype"]
    back = read_back(write_model(tmp_path, packed))
    assert back["w"].dtype == np.float32
    assert np.max(np.abs(back["w"] - array)) <= 2.0 / 255


def test_missing_shard_is_named(tmp_path: Path) -> None:
    model_json = write_model(tmp_path, weights.pack(sample_groups(), (), SHARD_BYTES))
    (tmp_path / "group1-shard2of6.bin").unlink()
    with pytest.raises(ModelError) as info:
        read_back(model_json)
    assert str(info.value) == (
        f"{model_json}: names the weight file 'group1-shard2of6.bin', which does not exist "
        f"({tmp_path / 'group1-shard2of6.bin'}); copy every shard beside model.json"
    )


def test_shard_cut_short_is_reported(tmp_path: Path) -> None:
    model_json = write_model(tmp_path, weights.pack(sample_groups(), (), SHARD_BYTES))
    shard = tmp_path / "group1-shard2of6.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ModelError) as info:
        read_back(model_json)
    # The group holds 8192 + 128 + 60 + 28 bytes; with 100 fewer, the bias after the kernel
    # is the first weight that no longer fits.
    assert str(info.value) == (
        f"{model_json}: weightsManifest[0]: the weight files hold 8308 bytes but weight "
        "'dense/bias' needs bytes 8192 to 8320; a shard is missing or cut short"
    )


def test_shard_with_extra_bytes_is_reported(tmp_path: Path) -> None:
    packed = weights.pack([[Weight("w", np.ones(4, np.float32))]], (), SHARD_BYTES)
    model_json = write_model(tmp_path, packed)
    (tmp_path / "group1-shard1of1.bin").write_bytes(packed.shards[0][1] + b"\0" * 4)
    with pytest.raises(ModelError) as info:
        read_back(model_json)
    assert str(info.value) == (
        f"{model_json}: weightsManifest[0]: the weight files hold 20 bytes but the manifest "
        "describes 16"
    )


def test_string_weight_cut_short_is_reported_as_cut_short(tmp_path: Path) -> None:
    vocab = np.array(["alpha", "beta", "gamma"], dtype=object)
    packed = weights.pack([[Weight("vocab", vocab)]], (), SHARD_BYTES)
    model_json = write_model(tmp_path, packed)
    (tmp_path / "group1-shard1of1.bin").write_bytes(packed.shards[0][1][:-2])
    with pytest.raises(ModelError) as info:
        read_back(model_json)
    assert str(info.value) == (
        f"{model_json}: weightsManifest[0]: string weight 'vocab' runs past the end of its shards"
    )


@pytest.mark.parametrize(
    "quantization",
    [{"scale": 0.1, "min": 0.0}, {"dtype": "uint8", "min": 0.0}, {"dtype": "int4"}],
    ids=["no-dtype", "no-scale", "unknown-dtype"],
)
def test_malformed_quantization_entry_is_a_model_error(
    tmp_path: Path, quantization: dict[str, Any]
) -> None:
    (tmp_path / "w.bin").write_bytes(b"\x00\x01\x02\x03")
    model_json = tmp_path / "model.json"
    spec = {"name": "w", "shape": [4], "dtype": "float32", "quantization": quantization}
    model_json.write_text(
        json.dumps({"weightsManifest": [{"paths": ["w.bin"], "weights": [spec]}]})
    )
    with pytest.raises(ModelError, match="weight"):
        read_back(model_json)


# --- choosing dtypes ------------------------------------------------------------------------


NAMES = ["dense/kernel", "dense/bias", "out/kernel", "out/bias"]


def test_star_takes_only_the_weights_no_other_pattern_named() -> None:
    chosen = weights.dtype_for_weights(NAMES, [("float16", ("*",)), ("uint8", ("dense/*",))])
    assert chosen == {
        "dense/kernel": "uint8",
        "dense/bias": "uint8",
        "out/kernel": "float16",
        "out/bias": "float16",
    }


def test_patterns_without_star_leave_the_rest_unquantized() -> None:
    chosen = weights.dtype_for_weights(NAMES, [("uint16", ("*/kernel",))])
    assert chosen == {"dense/kernel": "uint16", "out/kernel": "uint16"}


def test_one_weight_matched_for_two_dtypes_is_refused() -> None:
    with pytest.raises(ModelError) as info:
        weights.dtype_for_weights(NAMES, [("float16", ("*/kernel",)), ("uint8", ("dense/*",))])
    assert str(info.value) == "weight 'dense/kernel' matches patterns for both float16 and uint8"


def test_two_fallthrough_dtypes_are_refused() -> None:
    # tensorflowjs refuses a second fallthrough; silently keeping the last one would quantize
    # every other weight with a dtype the manifest did not single out.
    with pytest.raises(ModelError):
        weights.dtype_for_weights(NAMES, [("float16", ("*",)), ("uint8", ("*",))])


# --- strings --------------------------------------------------------------------------------


def test_string_weights_round_trip(tmp_path: Path) -> None:
    vocab = np.array([["a", "héllo"], ["", "日本"]], dtype=object)
    raw = np.array([b"\x00\xff", b"x"], dtype=object)
    packed = weights.pack(
        [[Weight("vocab", vocab), Weight("raw", raw)]], (("uint8", ("*",)),), SHARD_BYTES
    )
    assert packed.manifest[0]["weights"] == [
        {"name": "vocab", "shape": [2, 2], "dtype": "string"},
        {"name": "raw", "shape": [2], "dtype": "string"},
    ]
    back = read_back(write_model(tmp_path, packed))
    assert back["vocab"].shape == (2, 2)
    assert back["vocab"].tolist() == [[b"a", "héllo".encode()], [b"", "日本".encode()]]
    assert back["raw"].tolist() == [b"\x00\xff", b"x"]
    # What was read packs to the same bytes again.
    again = weights.pack([[Weight(n, a) for n, a in back.items()]], (), SHARD_BYTES)
    assert again.shards == packed.shards
