"""End to end: every input kind, to both formats, at every quantization, verified in tfjs.

One manifest lists every combination and is built once, in this process; the tests then read
the report and the files. Further builds check what a build promises besides its files: no
TensorFlow for tfjs inputs or for a build with nothing changed, byte-identical output, and a
damaged cache that heals itself.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
import pytest
from conftest import Isolated, SourceModels, needs_node

from bundler import build, emit, manifest
from bundler.models import stage
from bundler.models.cache import ENTRY_FILE

pytestmark = [pytest.mark.slow, needs_node]

VERSIONS = ("3.21.0", "4.22.0")
TABLE = {"uint8": ["conv*"], "float16": ["*"]}

# The largest absolute error allowed on the models' softmax outputs, by quantization: five to
# ten times the worst measured (none 1.8e-07, float16 2.4e-04, uint16 2.0e-05, uint8 7.2e-03,
# the uint8 + float16 table 1.0e-02), so a regression fails and rounding noise does not.
BOUNDS = {"none": 1e-5, "float16": 5e-3, "uint16": 5e-4, "uint8": 5e-2, "table": 5e-2}


@dataclass(frozen=True)
class Case:
    """One [[models]] entry of the end-to-end manifest and what its report should say."""

    name: str
    source: str  # a field of SourceModels
    input_format: str
    format: str
    quantize: str | dict[str, list[str]]
    verify: bool = True

    @property
    def bound(self) -> float:
        return BOUNDS[self.quantize if isinstance(self.quantize, str) else "table"]


CASES = (
    # Keras 2 .h5, through tf_keras.
    Case("k2h5-graph-none", "k2_cnn_h5", "keras_h5", "graph", "none"),
    Case("k2h5-layers-none", "k2_cnn_h5", "keras_h5", "layers", "none"),
    Case("k2h5-graph-float16", "k2_mlp_h5", "keras_h5", "graph", "float16"),
    Case("k2h5-layers-uint8", "k2_mlp_h5", "keras_h5", "layers", "uint8"),
    # Keras 3 .h5 and .keras.
    Case("k3h5-graph-uint16", "k3_mlp_h5", "keras_h5", "graph", "uint16"),
    Case("k3h5-layers-none", "k3_mlp_h5", "keras_h5", "layers", "none"),
    Case("keras-graph-none", "k3_cnn_keras", "keras", "graph", "none"),
    Case("keras-layers-table", "k3_cnn_keras", "keras", "layers", TABLE),
    # SavedModel: graph only.
    Case("saved-graph-none", "saved_model", "saved_model", "graph", "none"),
    Case("saved-graph-uint8", "saved_model", "saved_model", "graph", "uint8"),
    # tfjs GraphModel: graph only, re-quantized without TensorFlow.
    Case("tfjsg-graph-none", "tfjs_graph", "tfjs_graph", "graph", "none"),
    Case("tfjsg-graph-uint8", "tfjs_graph", "tfjs_graph", "graph", "uint8"),
    # tfjs LayersModel: to layers without TensorFlow, to graph through tf_keras.
    Case("tfjsl-layers-float16", "tfjs_layers", "tfjs_layers", "layers", "float16"),
    Case("tfjsl-graph-uint16", "tfjs_layers", "tfjs_layers", "graph", "uint16"),
)
UNVERIFIED = Case("unverified", "k2_mlp_h5", "keras_h5", "graph", "none", verify=False)
ALL = (*CASES, UNVERIFIED)


@dataclass(frozen=True)
class Built:
    """The end-to-end site after its first build."""

    root: Path
    manifest: Path
    result: build.Result

    @property
    def out(self) -> Path:
        return self.root / "dist"

    @property
    def cache(self) -> Path:
        return self.root / ".bundler-cache"

    def model(self, name: str) -> dict[str, Any]:
        return next(m for m in self.result.report.to_json()["models"] if m["name"] == name)


@pytest.fixture(scope="module")
def built(source_models: SourceModels, tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("e2e") / "site"
    sources = _copy_sources(source_models, root)
    text = '[project]\nname = "e2e"\n'
    for case in ALL:
        text += _model_toml(case, sources[case.source])
    (root / "bundle.toml").write_text(text)
    result = build.build(manifest.load(root / "bundle.toml"))
    return Built(root, root / "bundle.toml", result)


# --- the first build ---------------------------------------------------------------------------


def test_first_build_converts_every_model_and_writes_its_report(built: Built) -> None:
    assert built.result.written
    assert built.result.converted == [c.name for c in ALL]
    assert built.result.reused == []
    report = built.result.report.to_json()
    assert [m["name"] for m in report["models"]] == [c.name for c in ALL]
    assert report["targets"] == ["wechat", "web"]
    assert json.loads((built.out / build.REPORT_FILE).read_text()) == report


def test_output_folder_holds_exactly_the_listed_files(built: Built) -> None:
    listed = {f for m in built.result.report.to_json()["models"] for f in m["files"]}
    # The targets' own folders (wechat/, remote/, web/) are tested with their targets.
    models = {f for f in _tree(built.out) if not f.startswith(("wechat/", "remote/", "web/"))}
    assert models == listed | {build.REPORT_FILE, emit.OWNED}
    # The record of what the build wrote lists every other file.
    owned = json.loads((built.out / emit.OWNED).read_text(encoding="utf-8"))["files"]
    assert owned == sorted(set(_tree(built.out)) - {emit.OWNED})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_model_matches_its_source_in_both_runtimes(built: Built, case: Case) -> None:
    m = built.model(case.name)
    assert m["input_format"] == case.input_format
    assert m["format"] == case.format
    assert m["quantize"] == case.quantize
    errors = m["max_abs_error"]
    assert sorted(errors) == list(VERSIONS)
    for version, error in errors.items():
        assert error is not None, f"{case.name}: not verified in tfjs {version}"
        assert 0 <= error <= case.bound, f"{case.name}: tfjs {version} error {error:.3g}"


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_model_files_shards_and_brotli_copies(built: Built, case: Case) -> None:
    m = built.model(case.name)
    folder = f"models/{case.name}/{m['hash']}"
    files = {f: (built.out / f).read_bytes() for f in m["files"]}
    assert all(f.startswith(folder + "/") for f in files)
    doc = json.loads(files[f"{folder}/model.json"])
    assert doc["format"] == ("graph-model" if case.format == "graph" else "layers-model")
    shards = [f"{folder}/{p}" for group in doc["weightsManifest"] for p in group["paths"]]
    assert len(shards) == m["shards"] >= 1
    plain = {f"{folder}/model.json", *shards}
    assert set(files) == plain | {f + ".br" for f in plain}
    assert m["weight_bytes"] == sum(len(files[s]) for s in shards)
    assert m["brotli_bytes"] == sum(len(files[s + ".br"]) for s in shards)
    for name in plain:
        assert brotli.decompress(files[name + ".br"]) == files[name], name


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
def test_weights_are_stored_at_the_asked_dtypes(built: Built, case: Case) -> None:
    m = built.model(case.name)
    doc = json.loads((built.out / m["files"][0]).read_text())
    stored = {
        w["name"]: w.get("quantization", {}).get("dtype")
        for group in doc["weightsManifest"]
        for w in group["weights"]
        if w["dtype"] == "float32"  # as in tensorflowjs, only float32 weights are quantized
    }
    assert stored
    assert stored == {name: _expected_dtype(name, case.quantize) for name in stored}
    assert m["params"] > 0


def test_table_quantization_mixes_dtypes(built: Built) -> None:
    m = built.model("keras-layers-table")
    doc = json.loads((built.out / m["files"][0]).read_text())
    weights = {w["name"]: w for g in doc["weightsManifest"] for w in g["weights"]}
    assert weights["conv/kernel"]["quantization"]["dtype"] == "uint8"
    assert weights["probs/kernel"]["quantization"]["dtype"] == "float16"


def test_unverified_model_is_reported_with_a_warning(built: Built) -> None:
    assert built.model(UNVERIFIED.name)["max_abs_error"] == {}
    assert built.result.report.to_json()["warnings"] == [
        'model "unverified": not verified (verify = false): nothing checked that the tfjs '
        "runtime loads it and predicts what the source model predicts",
        manifest.TOURIST_APPID_WARNING,
    ]


# --- builds after the first ----------------------------------------------------------------------


def test_second_build_reuses_everything_imports_no_tensorflow_and_writes_nothing(
    built: Built, run_isolated: Callable[[list[str]], Isolated]
) -> None:
    before = _stats(built.out) | _stats(built.cache)
    run = run_isolated(["build", str(built.manifest), "--json"])
    assert run.code == 0, run.stderr
    assert run.imported == []
    facts = json.loads(run.stdout)["build"]
    assert facts["written"] is False
    assert facts["converted"] == []
    assert facts["reused"] == [c.name for c in ALL]
    assert _stats(built.out) | _stats(built.cache) == before


def test_tfjs_inputs_requantize_without_tensorflow(
    source_models: SourceModels,
    tmp_path: Path,
    run_isolated: Callable[[list[str]], Isolated],
) -> None:
    sources = _copy_sources(source_models, tmp_path)
    cases = (
        Case("graph-uint8", "tfjs_graph", "tfjs_graph", "graph", "uint8"),
        Case("graph-table", "tfjs_graph", "tfjs_graph", "graph", {"uint16": ["*"]}),
        Case("layers-float16", "tfjs_layers", "tfjs_layers", "layers", "float16"),
    )
    text = "".join(_model_toml(c, sources[c.source]) for c in cases)
    (tmp_path / "bundle.toml").write_text(text)
    run = run_isolated(["build", str(tmp_path / "bundle.toml"), "--json"])
    assert run.code == 0, run.stderr
    assert run.imported == []
    report = json.loads(run.stdout)
    assert report["build"]["converted"] == [c.name for c in cases]
    for case, m in zip(cases, report["models"], strict=True):
        assert m["input_format"] == case.input_format
        assert sorted(m["max_abs_error"]) == list(VERSIONS)
        assert all(0 <= e <= BOUNDS["uint8"] for e in m["max_abs_error"].values()), m


def test_same_inputs_give_byte_identical_bundles_in_this_process(
    built: Built, tmp_path: Path
) -> None:
    again = _unbuilt_copy(built, tmp_path / "again")
    result = build.build(manifest.load(again / "bundle.toml"))
    assert result.converted == [c.name for c in ALL]
    assert _differing(_tree(built.out), _tree(again / "dist")) == []


def test_same_inputs_give_byte_identical_bundles_in_a_fresh_process(
    built: Built, tmp_path: Path, run_isolated: Callable[[list[str]], Isolated]
) -> None:
    # A fresh interpreter has none of this process's TensorFlow and Keras name counters.
    again = _unbuilt_copy(built, tmp_path / "again")
    run = run_isolated(["build", str(again / "bundle.toml"), "--json"])
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["build"]["converted"] == [c.name for c in ALL]
    assert _differing(_tree(built.out), _tree(again / "dist")) == []


@pytest.mark.parametrize("name", ["k2h5-graph-none", "tfjsg-graph-uint8"])
def test_damaged_cache_entry_is_converted_again(
    built: Built, tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "site"
    shutil.copytree(built.root, root, symlinks=True)
    out_before = _tree(root / "dist")
    config = manifest.load(root / "bundle.toml")
    [model] = [m for m in config.models if m.name == name]
    entry = root / ".bundler-cache" / "models" / stage.fingerprint(config, model)
    shard = entry / "group1-shard1of1.bin"
    damaged = bytearray(shard.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    shard.write_bytes(bytes(damaged))

    with caplog.at_level(logging.WARNING, logger="bundler"):
        result = build.build(manifest.load(root / "bundle.toml"))

    assert result.converted == [name]
    assert result.reused == [c.name for c in ALL if c.name != name]
    assert _tree(root / "dist") == out_before
    assert any(
        "is damaged" in r.getMessage() and entry.name in r.getMessage() for r in caplog.records
    )
    assert (entry / ENTRY_FILE).is_file()
    assert shard.read_bytes() != bytes(damaged)


# --- helpers -------------------------------------------------------------------------------------


def _copy_sources(models: SourceModels, site: Path) -> dict[str, str]:
    """Copy every source model into `site`/models; return field name → path from `site`."""
    shutil.copytree(models.root, site / "models")
    return {
        f.name: "models/" + getattr(models, f.name).relative_to(models.root).as_posix()
        for f in dataclasses.fields(models)
        if f.name != "root"
    }


def _model_toml(case: Case, source: str) -> str:
    quantize = case.quantize
    if isinstance(quantize, dict):
        cells = ", ".join(f"{k} = {json.dumps(v)}" for k, v in quantize.items())
        quantize_toml = "{" + cells + "}"
    else:
        quantize_toml = json.dumps(quantize)
    return (
        f"\n[[models]]\nname = {json.dumps(case.name)}\n"
        f"source = {json.dumps(source)}\n"
        f"format = {json.dumps(case.format)}\nquantize = {quantize_toml}\n"
        + ("" if case.verify else "verify = false\n")
    )


def _expected_dtype(name: str, quantize: str | dict[str, list[str]]) -> str | None:
    if quantize == "none":
        return None
    if isinstance(quantize, str):
        return quantize
    fallthrough = None
    for dtype, patterns in quantize.items():
        for pattern in patterns:
            if pattern == "*":
                fallthrough = dtype
            elif fnmatch.fnmatch(name, pattern):
                return dtype
    return fallthrough


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _unbuilt_copy(built: Built, dest: Path) -> Path:
    """The site's manifest and sources in another folder, without its bundle and cache."""
    shutil.copytree(built.root, dest, ignore=shutil.ignore_patterns("dist", ".bundler-cache"))
    return dest


def _differing(first: dict[str, bytes], second: dict[str, bytes]) -> list[str]:
    return sorted(f for f in first.keys() | second.keys() if first.get(f) != second.get(f))


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    """Inode and mtime of the folder and of everything in it: any rewrite changes one."""
    paths = [folder, *sorted(folder.rglob("*"))]
    return {str(p): (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in paths}


@needs_node
def test_a_tfjs_layers_source_runs_once_per_runtime_in_batches_of_one_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tfjs source's reference comes from stock tfjs, run as one batch beside the runtimes:
    each runtime then runs the layers model once, in batches of one row (the other batch
    path), not a second time."""
    from bundler import starter

    starter.write(tmp_path / "app")
    seen: list[tuple[str, bool, bool]] = []
    real = stage.run

    def spying(checks: Any, rt: Any, say: Any = None) -> Any:
        seen.extend((c.name, c.one_row_batches, c.other_batch) for c in checks)
        return real(checks, rt, say)

    monkeypatch.setattr(stage, "run", spying)
    result = build.build(manifest.load(tmp_path / "app" / "bundle.toml"))
    assert result.converted == ["starter"]
    assert seen == [("starter", True, False), ("starter", True, False)]  # wechat, web
