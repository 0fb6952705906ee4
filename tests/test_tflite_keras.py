"""The export targets: `.tflite` files checked in TFLite's interpreter, Keras files reloaded.

The manifest's refusals are checked first, without TensorFlow. The builds then convert the
session's small models and a few of this module's own; every file is judged again here,
independently of the bundler: loaded by TFLite's interpreter or by Keras, it must predict
what the source model, loaded afresh, predicts on inputs the test draws itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Isolated, SourceModels, needs_node

from bundler import build, manifest, starter
from bundler.cli import _size, main
from bundler.errors import ManifestError
from bundler.models.artifacts import content_hash

# Bounds on the softmax outputs, by quantize: float32 to rounding; float16 and TFLite's 8-bit
# dynamic range at five to ten times the worst measured (2.9e-04 and 4.1e-03).
BOUNDS = {"none": 1e-5, "float16": 3e-3, "uint8": 4e-2}


# --- the manifest: targets that cannot be made from a source --------------------------------


def _problems(root: Path, text: str) -> tuple[str, ...]:
    (root / "bundle.toml").write_text(text)
    with pytest.raises(ManifestError) as info:
        manifest.load(root / "bundle.toml")
    return info.value.problems


@pytest.fixture
def light(tmp_path: Path) -> Path:
    """Sources as `sources.detect` sees them, without TensorFlow: a tfjs GraphModel, a
    SavedModel folder, and the starter's tfjs LayersModel."""
    starter.write(tmp_path)
    graph = {"format": "graph-model", "modelTopology": {"node": []}, "weightsManifest": []}
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "model.json").write_text(json.dumps(graph))
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"\0")
    return tmp_path


def test_a_graph_model_cannot_become_tflite_or_keras(light: Path) -> None:
    text = (
        '[project]\ntargets = ["tflite", "keras"]\n\n[[models]]\nname = "face"\n'
        'source = "graph/model.json"\n'
    )
    why = (
        'model "face" is a TensorFlow.js graph model, which holds no Keras layers: target '
        '"{0}" cannot be made from it; give its Keras file (.keras or .h5) as source, or '
        'remove "{0}" from project.targets'
    )
    assert _problems(light, text) == (
        "models[0].source: " + why.format("tflite"),
        "models[0].source: " + why.format("keras"),
    )


def test_a_saved_model_cannot_become_keras(light: Path) -> None:
    text = '[project]\ntargets = ["tflite", "keras"]\n\n[[models]]\nname = "sm"\nsource = "sm"\n'
    assert _problems(light, text) == (
        'models[0].source: model "sm" is a SavedModel, which holds a graph, not Keras layers: '
        'target "keras" cannot be made from it; give its Keras file (.keras or .h5) as source, '
        'or remove "keras" from project.targets',
    )


def test_tflite_refuses_a_quantize_table(light: Path) -> None:
    text = (
        '[project]\ntargets = ["web", "tflite"]\n\n[[models]]\nname = "mlp"\n'
        'source = "models/starter/model.json"\nformat = "layers"\n'
        'quantize = {uint8 = ["dense*"]}\n'
    )
    assert _problems(light, text) == (
        'models[0].quantize: model "mlp": its quantize is a pattern table, and TFLite '
        'quantizes a whole model; with target "tflite", use "none", "float16", "uint16" or '
        '"uint8"',
    )


def test_the_export_tables(light: Path) -> None:
    model = '\n[[models]]\nname = "mlp"\nsource = "models/starter/model.json"\n'
    text = '[tflite]\nselect_tf_ops = "yes"\nflex = 1\n[keras]\nformat = "hdf5"\n' + model
    assert _problems(light, text) == (
        "tflite.flex: unknown key (allowed: select_tf_ops)",
        'tflite.select_tf_ops: expected true or false, got "yes" (string)',
        'keras.format: "hdf5" is not allowed; expected "keras" or "h5" (did you mean "h5"?)',
    )
    (light / "bundle.toml").write_text("[tflite]\nselect_tf_ops = true\n" + model)
    config = manifest.load(light / "bundle.toml")
    assert config.tflite.select_tf_ops
    assert config.keras.format == "keras"
    assert config.project.targets == ("wechat", "web"), "tflite and keras are asked for by name"


# --- models of this module -------------------------------------------------------------------


@dataclass(frozen=True)
class Extra:
    """Models the session's fixtures lack."""

    wide_h5: Path  # tf_keras, Dense 32 → 64 → 4: a kernel large enough for dynamic range
    flex: Path  # a SavedModel with Cumprod, which TFLite has only as a select TensorFlow op


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> Extra:
    import tensorflow as tf
    import tf_keras

    root = tmp_path_factory.mktemp("export-models")
    rng = np.random.default_rng(7)
    inp = tf_keras.Input((32,), name="features")
    hidden = tf_keras.layers.Dense(64, activation="relu", name="hidden")(inp)
    out = tf_keras.layers.Dense(4, activation="softmax", name="probs")(hidden)
    wide = tf_keras.Model(inp, out)
    wide.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in wide.weights])
    wide.save(root / "wide.h5")

    class Running(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x: Any) -> Any:
            return {"y": tf.math.cumprod(x, axis=1)}

    running = Running()
    tf.saved_model.save(
        running, str(root / "flex"), signatures={"serving_default": running.__call__}
    )
    return Extra(root / "wide.h5", root / "flex")


# --- a build of every Keras source to tflite, keras and web ----------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # a field of SourceModels, or of Extra
    quantize: str = "none"


CASES = (
    Case("k2cnn", "k2_cnn_h5"),
    Case("k2mlp-f16", "k2_mlp_h5", "float16"),
    Case("k3cnn", "k3_cnn_keras"),
    Case("k3mlp", "k3_mlp_h5"),
    Case("tfjsl", "tfjs_layers"),
    Case("wide", "wide_h5"),
    Case("wide-u8", "wide_h5", "uint8"),
)


@dataclass(frozen=True)
class Built:
    root: Path
    result: build.Result
    sources: dict[str, Path]

    @property
    def report(self) -> dict[str, Any]:
        return self.result.report.to_json()

    def model(self, name: str) -> dict[str, Any]:
        return next(m for m in self.report["models"] if m["name"] == name)

    def file(self, name: str, kind: str) -> Path:
        (rel,) = self.model(name)[kind]["files"]
        return self.root / "dist" / rel


def _source(case: Case, models: SourceModels, extra: Extra) -> Path:
    path: Path = getattr(models, case.source, None) or getattr(extra, case.source)
    return path


def _site(root: Path, text: str, sources: dict[str, Path]) -> Path:
    """A folder with each source copied to `models/<name>/` and a manifest naming them:
    `{name}` in `text` becomes the source's path relative to the manifest."""
    paths = {}
    for name, path in sources.items():
        folder = root / "models" / name
        if path.is_dir():
            shutil.copytree(path, folder)
            paths[name] = f"models/{name}"
        elif path.name == "model.json":
            shutil.copytree(path.parent, folder)
            paths[name] = f"models/{name}/model.json"
        else:
            folder.mkdir(parents=True)
            shutil.copy(path, folder / path.name)
            paths[name] = f"models/{name}/{path.name}"
    (root / "bundle.toml").write_text(text.format(**paths))
    return root


@pytest.fixture(scope="module")
def built(
    source_models: SourceModels, extra: Extra, tmp_path_factory: pytest.TempPathFactory
) -> Built:
    sources = {c.name: _source(c, source_models, extra) for c in CASES}
    text = '[project]\nname = "exports"\ntargets = ["web", "tflite", "keras"]\n'
    for c in CASES:
        text += (
            f'\n[[models]]\nname = "{c.name}"\nsource = "{{{c.name}}}"\n'
            f'format = "layers"\nquantize = "{c.quantize}"\n'
        )
    root = _site(tmp_path_factory.mktemp("exports") / "site", text, sources)
    result = build.build(manifest.load(root / "bundle.toml"))
    return Built(root, result, sources)


def _inputs(shapes: list[list[int]], seed: int) -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return [rng.random([3, *s[1:]], dtype=np.float32) for s in shapes]


def _load_source(path: Path) -> Any:
    """The source model as its author would load it."""
    import keras
    import tf_keras

    if path.name == "model.json":
        from tensorflowjs.converters import keras_tfjs_loader

        return keras_tfjs_loader.load_keras_model(str(path))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".keras" or _keras3_h5(path):
            return keras.models.load_model(path, compile=False)
        return tf_keras.models.load_model(path, compile=False)


def _keras3_h5(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return str(f.attrs.get("keras_version", "")).startswith("3.")


def _interpreter(data: bytes) -> Any:
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(
            model_content=data,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )


@pytest.mark.slow
@needs_node
def test_every_keras_source_becomes_a_tflite_file_that_predicts_as_its_source(
    built: Built,
) -> None:
    for c in CASES:
        path = built.file(c.name, "tflite")
        data = path.read_bytes()
        # <out>/tflite/<name>/<hash>/<name>.tflite, the hash of the bytes written
        assert path.name == f"{c.name}.tflite"
        assert path.parent.name == content_hash({path.name: hashlib.sha256(data).hexdigest()})
        assert path.parent.parent == built.root / "dist" / "tflite" / c.name
        source = _load_source(built.sources[c.name])
        interpreter = _interpreter(data)
        runner = interpreter.get_signature_runner("serving_default")
        ((name, detail),) = runner.get_input_details().items()
        (x,) = _inputs([list(detail["shape_signature"])], seed=11)
        (got,) = runner(**{name: x}).values()
        expected = np.asarray(source(x, training=False))
        error = float(np.max(np.abs(got - expected)))
        assert error <= BOUNDS[c.quantize], (c, error)
        facts = built.model(c.name)["tflite"]
        assert facts["bytes"] == len(data)
        assert facts["ops"] == len(interpreter._get_ops_details()), c
        assert facts["select_tf_ops"] == []
        assert 0 <= facts["max_abs_error"] <= BOUNDS[c.quantize], (c, facts)
        assert built.model(c.name)["max_abs_error"]["tflite"] == facts["max_abs_error"]


@pytest.mark.slow
@needs_node
def test_quantize_maps_to_tflite_weights(built: Built) -> None:
    wide, u8 = built.model("wide")["tflite"], built.model("wide-u8")["tflite"]
    assert wide["quantization"] == "float32"
    assert wide["weight_types"] == {"float32": 4}
    assert u8["quantization"] == "int8, dynamic range"
    # The 32×64 kernel becomes int8; TFLite keeps the small tensors float32.
    assert u8["weight_types"].get("int8") == 1, u8
    assert u8["bytes"] < wide["bytes"] * 0.6
    f16 = built.model("k2mlp-f16")["tflite"]
    assert f16["quantization"] == "float16"
    assert set(f16["weight_types"]) == {"float16"}
    assert f16["op_types"]["DEQUANTIZE"] >= 1


@pytest.mark.slow
@needs_node
def test_every_layers_model_becomes_a_keras_file_that_reloads(built: Built) -> None:
    import keras

    for c in CASES:
        path = built.file(c.name, "keras")
        assert path.name == f"{c.name}.keras"
        with zipfile.ZipFile(path) as z:
            assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
            assert "date_saved" not in json.loads(z.read("metadata.json"))
        reloaded = keras.models.load_model(path, compile=False)
        source = _load_source(built.sources[c.name])
        (x,) = _inputs([list(source.inputs[0].shape)], seed=12)
        error = float(np.max(np.abs(np.asarray(reloaded(x)) - np.asarray(source(x)))))
        assert error <= 1e-6, (c, error)
        facts = built.model(c.name)["keras"]
        assert facts["format"] == "keras"
        assert facts["runtime"].startswith("Keras 3.")
        assert facts["max_abs_error"] <= 1e-6


@pytest.mark.slow
@needs_node
def test_the_report_lists_every_runtime_and_warns_of_float_keras_files(built: Built) -> None:
    m = built.model("wide-u8")
    assert list(m["max_abs_error"]) == ["4.22.0", "tflite", "keras"]
    assert {"format", "weight_bytes", "files"} <= set(m), "the tfjs part stays"
    assert built.report["tflite"] == {"root": "tflite"}
    assert built.report["keras"] == {"root": "keras"}
    assert (
        'model "wide-u8": quantize applies to tfjs and TFLite; its Keras file keeps the '
        "source's float weights"
    ) in built.report["warnings"]
    assert built.result.converted == [c.name for c in CASES]


@pytest.mark.slow
@needs_node
def test_a_rebuild_with_nothing_changed_imports_no_tensorflow_and_writes_nothing(
    built: Built, run_isolated: Callable[[list[str]], Isolated]
) -> None:
    before = {p: p.read_bytes() for p in (built.root / "dist").rglob("*") if p.is_file()}
    run = run_isolated(["build", "--json", str(built.root / "bundle.toml")])
    assert run.code == 0, run.stderr
    assert run.imported == []
    assert json.loads(run.stdout)["build"]["written"] is False
    after = {p: p.read_bytes() for p in (built.root / "dist").rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_equal_sources_give_equal_bytes_in_another_checkout(built: Built, tmp_path: Path) -> None:
    """A clean cache converts again; TFLite's and Keras' files come out byte for byte."""
    copy = tmp_path / "again"
    shutil.copytree(built.root, copy, ignore=shutil.ignore_patterns("dist", ".bundler-cache"))
    text = (copy / "bundle.toml").read_text().replace('"web", ', "")
    (copy / "bundle.toml").write_text(text)
    build.build(manifest.load(copy / "bundle.toml"))
    for c in CASES:
        for kind in ("tflite", "keras"):
            rel = built.file(c.name, kind).relative_to(built.root)
            assert (copy / rel).read_bytes() == built.file(c.name, kind).read_bytes(), rel


# --- TFLite only: a SavedModel, select TensorFlow ops, the terminal ---------------------------


TFLITE_ONLY = """\
[project]
targets = ["tflite"]

[[models]]
name = "sm"
source = "{sm}"
quantize = "uint8"

[[models]]
name = "running"
source = "{running}"
"""


@pytest.fixture
def tflite_site(
    source_models: SourceModels, extra: Extra, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    root = _site(
        tmp_path / "site",
        TFLITE_ONLY,
        {"sm": source_models.saved_model, "running": extra.flex},
    )
    monkeypatch.chdir(root)
    return root


@pytest.mark.slow
def test_tensorflow_ops_outside_the_builtins_need_the_option(
    tflite_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", "bundle.toml"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        'error: model "running": needs TensorFlow ops that TFLite\'s builtins lack: Cumprod. '
        "Set select_tf_ops = true in [tflite] to ship them as select TensorFlow ops (the app "
        "must then link TFLite's Flex delegate), or replace them in the model"
    )
    assert "Traceback" not in err
    assert not (tflite_site / "dist").exists(), "nothing written"


@pytest.mark.slow
def test_select_tf_ops_when_allowed_and_the_terminal_table(
    tflite_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (tflite_site / "bundle.toml").read_text()
    (tflite_site / "bundle.toml").write_text("[tflite]\nselect_tf_ops = true\n\n" + text)
    assert main(["build", "bundle.toml"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tflite_site / "dist" / "bundle-report.json").read_text())
    running, sm = (next(m for m in report["models"] if m["name"] == n) for n in ("running", "sm"))
    assert running["tflite"]["select_tf_ops"] == ["FlexCumprod"]
    assert running["max_abs_error"] == {"tflite": 0.0}
    assert "format" not in running and "files" not in running, "no tfjs was built"
    assert not (tflite_site / "dist" / "models").exists()
    assert sm["tflite"]["quantization"] == "int8, dynamic range"
    assert sm["max_abs_error"]["tflite"] <= BOUNDS["uint8"]
    assert (
        'model "running": the TFLite file uses select TensorFlow ops (FlexCumprod); the app '
        "must link TFLite's Flex delegate (tensorflow-lite-select-tf-ops on Android, "
        "TensorFlowLiteSelectTfOps on iOS), which adds megabytes"
    ) in report["warnings"]
    # The terminal: one row per model and export target.
    rows = [line.split() for line in out.splitlines() if line.startswith(("sm ", "running "))]
    assert rows == [
        [
            "sm",
            "tflite",
            *_size(sm["tflite"]["bytes"]).split(),
            str(sm["tflite"]["ops"]),
            "int8,",
            "dynamic",
            "range",
            f"{sm['max_abs_error']['tflite']:.1e}",
            "100.0%",
            "converted",
        ],
        [
            "running",
            "tflite",
            *_size(running["tflite"]["bytes"]).split(),
            "1",
            "float32",
            "0.0e+00",
            "100.0%",
            "converted",
        ],
    ]
    folder = "/".join(sm["tflite"]["files"][0].split("/")[1:])
    assert f"tflite: {tflite_site / 'dist' / 'tflite'} (one folder per model: {folder}, ...)" in out
    assert (
        "max error: largest absolute difference from the source model; top-1: rows whose "
        "top class agrees with it; in tflite" in out
    )


@pytest.mark.slow
def test_keras_h5_by_option(source_models: SourceModels, tmp_path: Path) -> None:
    import tf_keras

    text = (
        '[project]\ntargets = ["keras"]\n\n[keras]\nformat = "h5"\n\n'
        '[[models]]\nname = "k2"\nsource = "{k2}"\n'
    )
    root = _site(tmp_path / "site", text, {"k2": source_models.k2_cnn_h5})
    result = build.build(manifest.load(root / "bundle.toml"))
    facts = result.report.to_json()["models"][0]["keras"]
    (rel,) = facts["files"]
    assert rel.endswith("/k2.h5") and facts["format"] == "h5"
    reloaded = tf_keras.models.load_model(root / "dist" / rel, compile=False)
    source = tf_keras.models.load_model(source_models.k2_cnn_h5, compile=False)
    (x,) = _inputs([[None, 8, 8, 1]], seed=13)
    assert np.array_equal(np.asarray(reloaded(x)), np.asarray(source(x)))
    assert facts["max_abs_error"] == 0.0
