"""The inputs a build verifies on: the user's samples, checked against the model, or made-up
inputs that fit it; and the figures measured on them (mean error, top-1 agreement)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SourceModels, needs_node

from bundler import build, manifest, starter
from bundler.cli import main
from bundler.errors import ManifestError, ModelError
from bundler.manifest import ModelConfig
from bundler.models import samples
from bundler.models.verify import metrics

IMAGE = ("image", [None, 8, 8, 3], "float32")
IDS = ("ids", [None, None], "int32")


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelConfig:
    """The starter's model, as the manifest reads it; tests swap in samples and shapes."""
    starter.write(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = manifest.load(tmp_path / "bundle.toml")
    return config.models[0]


def with_samples(model: ModelConfig, path: Path, limit: int | None = None) -> ModelConfig:
    return dataclasses.replace(model, samples=path, samples_limit=limit)


def error(model: ModelConfig, specs: list[Any]) -> str:
    with pytest.raises(ModelError) as info:
        samples.for_model(model, specs)
    return str(info.value)


# --- samples ---------------------------------------------------------------------------------


def test_an_npz_gives_each_input_by_name_and_keeps_other_arrays_out(
    model: ModelConfig, tmp_path: Path
) -> None:
    path = tmp_path / "s.npz"
    image = np.random.default_rng(0).random((5, 8, 8, 3))
    np.savez(path, image=image, ids=np.arange(10).reshape(5, 2), labels=np.arange(5))
    got = samples.for_model(with_samples(model, path, limit=3), [IMAGE, IDS])
    assert not got.made_up and got.rows == 3
    (n1, a1), (n2, a2) = got.arrays
    assert (n1, a1.dtype, a1.shape) == ("image", np.float32, (3, 8, 8, 3))
    assert (n2, a2.dtype, a2.shape) == ("ids", np.int32, (3, 2))
    assert np.allclose(a1, image[:3])


def test_an_npy_or_a_lone_array_serves_a_one_input_model(
    model: ModelConfig, tmp_path: Path
) -> None:
    np.save(tmp_path / "s.npy", np.zeros((4, 8, 8, 3), dtype=np.uint8))
    np.savez(tmp_path / "s.npz", whatever=np.zeros((4, 8, 8, 3)))
    for name in ("s.npy", "s.npz"):
        got = samples.for_model(with_samples(model, tmp_path / name), [IMAGE])
        assert got.arrays[0][0] == "image" and got.arrays[0][1].dtype == np.float32


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"image": np.zeros((4, 8, 7, 3))},
            "s.npz: input 'image' has shape [4, 8, 7, 3]; the model takes [rows, 8, 8, 3] "
            "(rows first)",
        ),
        (
            {"image": np.zeros((0, 8, 8, 3))},
            "s.npz: input 'image' has no rows; the model takes [rows, 8, 8, 3]",
        ),
        (
            {"image": np.zeros((4, 8, 8, 3), dtype=np.complex64)},
            "s.npz: input 'image' holds complex64 values; the model takes float32",
        ),
    ],
)
def test_samples_that_do_not_fit_say_what_was_found_and_what_the_model_takes(
    model: ModelConfig, tmp_path: Path, arrays: dict[str, Any], message: str
) -> None:
    np.savez(tmp_path / "s.npz", **arrays)
    assert error(with_samples(model, tmp_path / "s.npz"), [IMAGE]) == message


def test_samples_for_several_inputs(model: ModelConfig, tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", image=np.zeros((4, 8, 8, 3)), tokens=np.zeros((4, 2)))
    assert error(with_samples(model, tmp_path / "s.npz"), [IMAGE, IDS]) == (
        "s.npz: no array named 'ids' (found 'image', 'tokens'); the model's inputs are "
        "image: [rows, 8, 8, 3] float32; ids: [rows, any] int32"
    )
    np.savez(tmp_path / "s.npz", image=np.zeros((4, 8, 8, 3)), ids=np.zeros((3, 2), np.int32))
    assert error(with_samples(model, tmp_path / "s.npz"), [IMAGE, IDS]) == (
        "s.npz: input 'ids' has 3 rows where the others have 4; every input needs one row "
        "per sample"
    )
    np.savez(tmp_path / "s.npz", image=np.zeros((4, 8, 8, 3)), ids=np.zeros((4, 2)))
    assert error(with_samples(model, tmp_path / "s.npz"), [IMAGE, IDS]) == (
        "s.npz: input 'ids' holds float64 values; the model takes int32"
    )
    np.save(tmp_path / "s.npy", np.zeros((4, 8, 8, 3)))
    assert error(with_samples(model, tmp_path / "s.npy"), [IMAGE, IDS]) == (
        "s.npy: an .npy holds one array, and the model has 2 inputs (image: [rows, 8, 8, 3] "
        "float32; ids: [rows, any] int32); save an .npz with one array per input name"
    )


def test_unreadable_samples_and_a_fixed_batch(model: ModelConfig, tmp_path: Path) -> None:
    (tmp_path / "s.npz").write_bytes(b"not a zip")
    assert error(with_samples(model, tmp_path / "s.npz"), [IMAGE]).startswith(
        "s.npz: cannot be read as .npy or .npz ("
    )
    np.save(tmp_path / "s.npy", np.zeros((3, 8, 8, 3)))
    fixed = ("image", [2, 8, 8, 3], "float32")
    assert error(with_samples(model, tmp_path / "s.npy"), [fixed]) == (
        "s.npy: input 'image' has 3 rows; the model takes batches of exactly 2, so give a "
        "multiple of 2"
    )


# --- made-up inputs ------------------------------------------------------------------------


def test_made_up_inputs_fit_the_model(model: ModelConfig) -> None:
    specs = [
        ("photo", [None, None, None, 3], "int32"),
        ("mask", [None, 4], "bool"),
        ("feats", [-1, -1], "float32"),
    ]
    got = samples.for_model(model, specs)
    assert got.made_up
    photo, mask, feats = (a for _, a in got.arrays)
    assert photo.shape == (2, 224, 224, 3) and photo.dtype == np.int32
    assert photo.min() >= 0 and 128 < photo.max() <= 255, "an int32 image gets pixel values"
    assert mask.dtype == np.bool_ and mask.shape == (2, 4)
    assert feats.shape == (2, 16) and feats.dtype == np.float32
    assert samples.for_model(model, specs).arrays[0][1].tobytes() == photo.tobytes()


def test_input_shape_gives_the_shapes(model: ModelConfig) -> None:
    given = dataclasses.replace(model, input_shape=((1, 96, 96, 3),))
    ((_, array),) = samples.for_model(given, [("photo", [None, None, None, 3], "float32")]).arrays
    assert array.shape == (1, 96, 96, 3)
    assert error(given, [IMAGE, IDS]) == (
        "input_shape gives [[1, 96, 96, 3]]; the model's inputs are image: [rows, 8, 8, 3]; "
        "ids: [rows, any]: give one shape per input, of the same rank"
    )


def test_chunks_follow_a_fixed_batch() -> None:
    assert samples.chunk_rows([IMAGE]) == samples.CHUNK_ROWS
    assert samples.chunk_rows([("x", [1, 8], "float32")]) == 1


# --- the manifest ----------------------------------------------------------------------------


def test_the_manifest_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    starter.write(tmp_path)
    monkeypatch.chdir(tmp_path)
    text = (tmp_path / "bundle.toml").read_text()
    np.save(tmp_path / "s.npy", np.zeros((2, 2)))
    cases = {
        'samples = "none.npz"': (
            f'models[0].samples: "none.npz": not found ({tmp_path / "none.npz"})'
        ),
        'samples = "s.csv"': 'models[0].samples: "s.csv" is not an .npz or .npy file; save '
        "samples with numpy.savez (one array per input name) or numpy.save",
        "samples_limit = 3": "models[0].samples_limit: applies with samples only: set samples too",
        'samples = "s.npy"\nsamples_limit = 0': "models[0].samples_limit: 0 must be greater than 0",
        "input_shape = [1, -1]": "models[0].input_shape: expected a shape such as [1, 224, 224, "
        "3] (rows first, every size given), or one such shape per input, got [1, -1]",
        'samples = "s.npy"\ninput_shape = [1, 2]': "models[0].input_shape: the samples give the "
        "inputs' shapes: remove input_shape",
    }
    for line, problem in cases.items():
        (tmp_path / "bundle.toml").write_text(text + line + "\n")
        with pytest.raises(ManifestError) as info:
            manifest.load(tmp_path / "bundle.toml")
        assert info.value.problems == (problem,), line
    (tmp_path / "bundle.toml").write_text(text + "input_shape = [[1, 2], [3, 4]]\n")
    assert manifest.load(tmp_path / "bundle.toml").models[0].input_shape == ((1, 2), (3, 4))


# --- figures -----------------------------------------------------------------------------------


def test_metrics_count_the_rows_whose_top_class_agrees() -> None:
    want = np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    got = np.array([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.3, 0.7]])
    m = metrics([got], [want])
    assert m.top1_agreement == 0.75 and m.rows == 4
    assert m.max_abs_error == pytest.approx(0.2)
    assert m.mean_abs_error == pytest.approx(0.1)
    assert metrics([np.zeros((4, 1))], [np.zeros((4, 1))]).top1_agreement is None


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled_site(source_models: SourceModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sampled") / "site"
    (root / "models").mkdir(parents=True)
    shutil.copy(source_models.k2_cnn_h5, root / "models" / "cnn.h5")
    rng = np.random.default_rng(3)
    np.savez(root / "samples.npz", image=rng.random((40, 8, 8, 1), dtype=np.float32))
    (root / "bundle.toml").write_text(
        '[project]\ntargets = ["web", "tflite"]\n\n[[models]]\nname = "cnn"\n'
        'source = "models/cnn.h5"\nquantize = "uint8"\nsamples = "samples.npz"\n'
        "samples_limit = 33\n"
    )
    build.build(manifest.load(root / "bundle.toml"))
    return root


@pytest.mark.slow
@needs_node
def test_a_build_verifies_on_the_samples_in_every_runtime(sampled_site: Path) -> None:
    report = json.loads((sampled_site / "dist" / "bundle-report.json").read_text())
    (m,) = report["models"]
    assert m["verified_on"] == {"inputs": "samples", "rows": 33}
    assert list(m["top1_agreement"]) == ["4.22.0", "tflite"]
    for runtime in ("4.22.0", "tflite"):
        assert 0.9 <= m["top1_agreement"][runtime] <= 1.0
        assert 0 < m["mean_abs_error"][runtime] <= m["max_abs_error"][runtime]
    assert m["tflite"]["rows"] == 33
    # With samples, uint8 is TFLite's full-integer scheme, calibrated on them: float in and
    # out, int8 inside.
    assert m["tflite"]["quantization"] == "int8, full integer"
    assert m["tflite"]["op_types"]["QUANTIZE"] == 1 and m["tflite"]["op_types"]["DEQUANTIZE"] == 1
    assert "float32" not in m["tflite"]["weight_types"]


@pytest.mark.slow
@needs_node
def test_samples_that_do_not_fit_fail_the_build_and_keep_the_bundle(
    sampled_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    site = tmp_path / "site"
    shutil.copytree(sampled_site, site)
    monkeypatch.chdir(site)
    before = {p: p.read_bytes() for p in (site / "dist").rglob("*") if p.is_file()}
    np.savez(site / "samples.npz", image=np.zeros((4, 8, 8, 3), dtype=np.float32))
    assert main(["build", "bundle.toml"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "error: model \"cnn\": samples.npz: input 'image' has shape [4, 8, 8, 3]; the model "
        "takes [rows, 8, 8, 1] (rows first)"
    )
    assert {p: p.read_bytes() for p in (site / "dist").rglob("*") if p.is_file()} == before


@pytest.fixture(scope="module")
def picky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel that takes rows of any length, as long as it is a multiple of 5."""
    import tensorflow as tf

    class Picky(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
        def __call__(self, x: Any) -> Any:
            return {"y": tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1, 5]), axis=2)}

    module = Picky()
    path = tmp_path_factory.mktemp("picky") / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path


@pytest.mark.slow
def test_made_up_inputs_the_model_rejects_say_how_to_give_better_ones(
    picky: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    shutil.copytree(picky, tmp_path / "picky")
    monkeypatch.chdir(tmp_path)
    model = '[[models]]\nname = "picky"\nsource = "picky"\n'
    (tmp_path / "bundle.toml").write_text('[project]\ntargets = ["tflite"]\n\n' + model)
    assert main(["build", "bundle.toml"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(
        'error: model "picky": the TFLite file and its source could not run on made-up inputs '
        "of shapes [[2, 16]] (float32): "
    )
    assert err.endswith(
        "; the inputs were made up from the model's input shapes: give real ones with "
        'samples = "<file>.npz", or the shapes to make them with input_shape = [...]'
    )
    (tmp_path / "bundle.toml").write_text(
        '[project]\ntargets = ["tflite"]\n\n' + model + "input_shape = [2, 15]\n"
    )
    assert main(["build", "bundle.toml"]) == 0


@pytest.fixture(scope="module")
def with_flags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel with a float input, a bool input and an int32 image-like input."""
    import tensorflow as tf

    class Flags(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 3], tf.float32, name="x"),
                tf.TensorSpec([None, 3], tf.bool, name="flag"),
                tf.TensorSpec([None, None, None, 1], tf.int32, name="pixels"),
            ]
        )
        def __call__(self, x: Any, flag: Any, pixels: Any) -> Any:
            brightness = tf.reduce_mean(tf.cast(pixels, tf.float32), axis=[1, 2]) / 255.0
            return {"y": tf.where(flag, x, -x) * brightness}

    module = Flags()
    path = tmp_path_factory.mktemp("flags") / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path


@pytest.mark.slow
@needs_node
def test_made_up_inputs_take_each_input_s_dtype(with_flags: Path, tmp_path: Path) -> None:
    shutil.copytree(with_flags, tmp_path / "flags")
    (tmp_path / "bundle.toml").write_text(
        '[project]\ntargets = ["web"]\n\n[[models]]\nname = "flags"\nsource = "flags"\n'
    )
    result = build.build(manifest.load(tmp_path / "bundle.toml"))
    (m,) = result.report.to_json()["models"]
    assert m["max_abs_error"]["4.22.0"] < 1e-6
    assert m["verified_on"] == {"inputs": "made up", "rows": 2}
