"""Bad input: exit status 1, one clear message, no traceback, the last good bundle untouched.

Each test starts from a site that has built once, breaks one thing, and builds again through
the command line. Messages are asserted exactly where their text is ours, and by their stable
parts where a library's words are quoted (h5py, tfjs).
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SourceModels, needs_node

from bundler import build, manifest, starter
from bundler.cli import main

FAST_MANIFEST = """\
[project]
name = "fast"
verify = false

[[models]]
name = "starter"
source = "models/starter/model.json"
format = "layers"

[[models]]
name = "other"
source = "models/other/model.json"
format = "layers"
quantize = "uint8"
"""

TF_MANIFEST = """\
[project]
name = "tf"

[[models]]
name = "mlp"
source = "models/mlp.h5"

[[models]]
name = "sm"
source = "models/sm"
"""


@pytest.fixture(scope="session")
def fast_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tfjs LayersModels built unverified: no TensorFlow, no Node."""
    root = tmp_path_factory.mktemp("fast") / "site"
    starter.write(root)
    shutil.copytree(root / "models" / "starter", root / "models" / "other")
    (root / "bundle.toml").write_text(FAST_MANIFEST)
    build.build(manifest.load(root / "bundle.toml"))
    return root


@pytest.fixture(scope="session")
def tf_site(source_models: SourceModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras 2 .h5 and a SavedModel, converted and verified (so its tests need Node)."""
    root = tmp_path_factory.mktemp("tf") / "site"
    (root / "models").mkdir(parents=True)
    shutil.copy(source_models.k2_mlp_h5, root / "models" / "mlp.h5")
    shutil.copytree(source_models.saved_model, root / "models" / "sm")
    (root / "bundle.toml").write_text(TF_MANIFEST)
    build.build(manifest.load(root / "bundle.toml"))
    return root


class Site:
    """A copy of a built site to break; remembers its bundle as it was."""

    def __init__(self, built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = (tmp_path / "site").resolve()
        shutil.copytree(built, self.root, symlinks=True)
        monkeypatch.chdir(self.root)  # messages then show the manifest as "bundle.toml"
        self.bundle = _tree(self.root / "dist")
        assert self.bundle, "the good build wrote nothing"
        self.entries = sorted(p.name for p in self.root.iterdir())

    def edit_manifest(self, old: str, new: str) -> None:
        text = (self.root / "bundle.toml").read_text()
        assert old in text
        (self.root / "bundle.toml").write_text(text.replace(old, new, 1))

    def fails(self, capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
        """Build through the CLI; check it failed cleanly; return the message's lines."""
        code = main(["build", *flags, "bundle.toml"])
        captured = capsys.readouterr()
        err = captured.err
        assert code == 1, err
        assert captured.out == ""
        if "-v" not in flags:
            assert "Traceback" not in err and "╭" not in err, err
        assert "internal error" not in err, err
        lines = err.splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
        assert len(starts) == 1, err
        # The bundle is as it was, and no half-written folder is left beside it.
        assert _tree(self.root / "dist") == self.bundle
        assert sorted(p.name for p in self.root.iterdir()) == self.entries
        return lines[starts[0] :]

    def path(self, rel: str) -> str:
        return str(self.root / rel)


@pytest.fixture
def fast(fast_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    return Site(fast_site, tmp_path, monkeypatch)


@pytest.fixture
def tf(tf_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    return Site(tf_site, tmp_path, monkeypatch)


# --- sources --------------------------------------------------------------------------------


@pytest.mark.slow
@needs_node
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_h5(tf: Site, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    h5 = tf.root / "models" / "mlp.h5"
    if damage == "garbage":
        h5.write_bytes(b"\x89HDF garbage, not a model\n" * 100)
    else:
        h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    lines = tf.fails(capsys)
    assert len(lines) == 2, lines
    first, problem = lines
    assert first == "error: bundle.toml has 1 problem:"
    # h5py's own words in the parentheses vary with its version.
    assert problem.startswith('  - models[0].source: "models/mlp.h5": not a readable HDF5 file (')
    assert problem.endswith(f" ({tf.path('models/mlp.h5')})")


@pytest.mark.slow
@needs_node
def test_h5_of_weights_only(tf: Site, capsys: pytest.CaptureFixture[str]) -> None:
    import h5py

    h5 = tf.root / "models" / "mlp.h5"
    h5.unlink()
    with h5py.File(h5, "w") as f:  # what model.save_weights("x.h5") writes at its top
        f.attrs["layer_names"] = [b"hidden", b"probs"]
    assert tf.fails(capsys) == [
        "error: bundle.toml has 1 problem:",
        '  - models[0].source: "models/mlp.h5": the file holds weights only (save_weights); save '
        "the whole model with model.save(...) so its architecture is included "
        f"({tf.path('models/mlp.h5')})",
    ]


@pytest.mark.slow
@needs_node
def test_empty_h5(tf: Site, capsys: pytest.CaptureFixture[str]) -> None:
    (tf.root / "models" / "mlp.h5").write_bytes(b"")
    assert tf.fails(capsys) == [
        "error: bundle.toml has 1 problem:",
        f'  - models[0].source: "models/mlp.h5": the file is empty ({tf.path("models/mlp.h5")})',
    ]


@needs_node
def test_missing_source(fast: Site, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(fast.root / "models" / "starter")
    source = fast.path("models/starter/model.json")
    assert fast.fails(capsys) == [
        "error: bundle.toml has 1 problem:",
        f'  - models[0].source: "models/starter/model.json": not found ({source})',
    ]


@pytest.mark.slow
@needs_node
def test_saved_model_without_serving_signature(
    tf: Site, unsigned_saved_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(tf.root / "models" / "sm")
    shutil.copytree(unsigned_saved_model, tf.root / "models" / "sm")
    assert tf.fails(capsys) == [
        f'error: model "sm": {tf.path("models/sm")}: the SavedModel has no serving_default '
        "signature "
        "(signatures: none); save it with tf.saved_model.save(model, path, signatures=...) "
        "or keras model.export(path)"
    ]


@needs_node
def test_tfjs_model_json_naming_a_missing_shard(
    fast: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    (fast.root / "models" / "other" / "group1-shard1of1.bin").unlink()
    model_json = fast.path("models/other/model.json")
    shard = fast.path("models/other/group1-shard1of1.bin")
    assert fast.fails(capsys) == [
        f"error: model \"other\": {model_json}: names the weight file 'group1-shard1of1.bin', "
        "which does not "
        f"exist ({shard}); copy every shard beside model.json"
    ]


@needs_node
def test_verbose_shows_the_traceback(fast: Site, capsys: pytest.CaptureFixture[str]) -> None:
    (fast.root / "models" / "other" / "group1-shard1of1.bin").unlink()
    code = main(["build", "-v", "bundle.toml"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err
    assert "ModelError" in err
    assert "names the weight file 'group1-shard1of1.bin'" in err
    assert _tree(fast.root / "dist") == fast.bundle


def fused_tanh_graph(folder: Path) -> Path:
    """A tfjs GraphModel whose Dense is a _FusedMatMul with a tanh activation.

    TensorFlow's remapper writes this for a Keras Dense(activation="tanh") with a bias where
    it uses oneDNN (x86's default); without oneDNN it fuses no tanh and the model runs. The
    graph is written here so the test does not depend on the converting CPU.
    """
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(8, 4)).astype("<f4")
    bias = rng.normal(size=(4,)).astype("<f4")
    (folder / "group1-shard1of1.bin").write_bytes(kernel.tobytes() + bias.tobytes())

    def ops(*names: str) -> list[str]:
        return [base64.b64encode(n.encode()).decode() for n in names]

    float32 = {"type": "DT_FLOAT"}
    shape = {"dim": [{"size": "-1"}, {"size": "8"}]}
    doc = {
        "format": "graph-model",
        "modelTopology": {
            "node": [
                {
                    "name": "x",
                    "op": "Placeholder",
                    "attr": {"dtype": float32, "shape": {"shape": shape}},
                },
                {"name": "kernel", "op": "Const", "attr": {"dtype": float32}},
                {"name": "bias", "op": "Const", "attr": {"dtype": float32}},
                {
                    "name": "squash",
                    "op": "_FusedMatMul",
                    "input": ["x", "kernel", "bias"],
                    "attr": {
                        "T": float32,
                        "fused_ops": {"list": {"s": ops("BiasAdd", "Tanh")}},
                        "num_args": {"i": "1"},
                        "transpose_a": {"b": False},
                        "transpose_b": {"b": False},
                        "epsilon": {"f": 0.0},
                    },
                },
            ],
            "versions": {"producer": 1994},
        },
        "signature": {
            "inputs": {"x": {"name": "x:0", "dtype": "DT_FLOAT", "tensorShape": shape}},
            "outputs": {"squash": {"name": "squash:0", "dtype": "DT_FLOAT"}},
        },
        "weightsManifest": [
            {
                "paths": ["group1-shard1of1.bin"],
                "weights": [
                    {"name": "kernel", "shape": [8, 4], "dtype": "float32"},
                    {"name": "bias", "shape": [4], "dtype": "float32"},
                ],
            }
        ],
    }
    path = folder / "model.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow
@needs_node
def test_graph_model_with_fused_tanh_fails_verification(
    tf: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    fused_tanh_graph(tf.root / "models" / "fused")
    tf.edit_manifest('source = "models/mlp.h5"', 'source = "models/fused/model.json"')
    lines = tf.fails(capsys)
    assert len(lines) == 2, lines
    first, problem = lines
    assert first == "error: 1 model fails in the tfjs 3.21.0 runtime:"
    assert problem.startswith('  - model "mlp": ')
    assert "tanh" in problem
    assert problem.endswith('use format = "layers" for this model')


# --- the manifest ---------------------------------------------------------------------------


@needs_node
def test_unknown_key(fast: Site, capsys: pytest.CaptureFixture[str]) -> None:
    fast.edit_manifest('quantize = "uint8"', 'quantise = "uint8"')
    assert fast.fails(capsys) == [
        "error: bundle.toml has 1 problem:",
        '  - models[1].quantise: unknown key (did you mean "quantize"?)',
    ]


@needs_node
def test_wrong_type(fast: Site, capsys: pytest.CaptureFixture[str]) -> None:
    fast.edit_manifest("verify = false", 'verify = "no"')
    assert fast.fails(capsys) == [
        "error: bundle.toml has 1 problem:",
        '  - project.verify: expected true or false, got "no" (string)',
    ]


@needs_node
def test_duplicate_name(fast: Site, capsys: pytest.CaptureFixture[str]) -> None:
    fast.edit_manifest('name = "other"', 'name = "Starter"')
    assert fast.fails(capsys) == [
        "error: bundle.toml has 1 problem:",
        '  - models[1].name: "Starter" is already the name of models[0]; model names must be '
        "unique (ignoring case)",
    ]


@needs_node
def test_unsafe_name(fast: Site, capsys: pytest.CaptureFixture[str]) -> None:
    fast.edit_manifest('name = "starter"', 'name = "../starter"')
    assert fast.fails(capsys) == [
        "error: bundle.toml has 1 problem:",
        '  - models[0].name: "../starter" is not a safe model name; use a letter, then up to 63 '
        "letters, digits, '-' or '_' (it becomes a folder name and a JavaScript string)",
    ]


@needs_node
def test_every_manifest_problem_at_once(fast: Site, capsys: pytest.CaptureFixture[str]) -> None:
    fast.edit_manifest('name = "starter"', 'name = "../starter"')
    fast.edit_manifest('name = "other"', 'name = "other"\nshard_bytes = "1MB"')
    fast.edit_manifest('quantize = "uint8"', 'quantise = "uint8"')
    assert fast.fails(capsys) == [
        "error: bundle.toml has 3 problems:",
        '  - models[0].name: "../starter" is not a safe model name; use a letter, then up to 63 '
        "letters, digits, '-' or '_' (it becomes a folder name and a JavaScript string)",
        '  - models[1].quantise: unknown key (did you mean "quantize"?)',
        '  - models[1].shard_bytes: expected an integer, got "1MB" (string)',
    ]


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
