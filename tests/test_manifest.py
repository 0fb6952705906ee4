"""bundle.toml → Config: exact error texts, defaults, paths; and what `sources.detect` tells."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import pytest

from bundler import limits, manifest, starter
from bundler.errors import ManifestError
from bundler.manifest import Quantize
from bundler.models import sources

STARTER = 'name = "digits"\nsource = "models/starter/model.json"\n'
SAFE_NAME_RULE = (
    "is not a safe model name; use a letter, then up to 63 letters, digits, '-' or '_' "
    "(it becomes a folder name and a JavaScript string)"
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A starter project (a tiny tfjs LayersModel) as the working folder."""
    starter.write(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "bundle.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(folder: Path, text: str) -> str:
    with pytest.raises(ManifestError) as info:
        manifest.load(write(folder, text))
    return str(info.value)


def one_problem(problem: str) -> str:
    return f"bundle.toml has 1 problem:\n  - {problem}"


def in_table(table: str, line: str) -> str:
    """A manifest with `line` in `[table]`, then the starter model."""
    return f"[{table}]\n{line}\n\n[[models]]\n{STARTER}"


def in_model(line: str) -> str:
    """A manifest with the starter model and `line` added to it."""
    return f"[[models]]\n{STARTER}{line}\n"


def write_graph_model(folder: Path) -> Path:
    """A weightless tfjs GraphModel: enough for `sources.detect`."""
    folder.mkdir(parents=True)
    doc = {"format": "graph-model", "modelTopology": {"node": []}, "weightsManifest": []}
    path = folder / "model.json"
    path.write_text(json.dumps(doc))
    return path


# --- reading the file -----------------------------------------------------------------------


def test_missing_manifest_says_how_to_create_one(project: Path) -> None:
    with pytest.raises(ManifestError) as info:
        manifest.load(project / "other.toml")
    assert str(info.value) == (
        "other.toml: no such file. Run `bundler init` to create a starter manifest."
    )


def test_folder_without_manifest_names_the_bundle_toml_it_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError) as info:
        manifest.load(tmp_path)
    assert str(info.value) == (
        "bundle.toml: no such file. Run `bundler init` to create a starter manifest."
    )


def test_invalid_toml_gives_line_and_column(project: Path) -> None:
    assert error_of(project, '[project\nname = "x"\n') == (
        "bundle.toml: not valid TOML: "
        "Expected ']' at the end of a table declaration (at line 1, column 9)"
    )


def test_manifest_outside_the_working_folder_is_named_by_its_absolute_path(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    path = write(project, f"[[models]]\n{STARTER}unknown = 1\n")
    with pytest.raises(ManifestError) as info:
        manifest.load(path)
    assert str(info.value) == (
        f"{path} has 1 problem:\n"
        "  - models[0].unknown: unknown key (allowed: name, source, format, quantize, "
        "delivery, preload, verify, shard_bytes, samples, samples_limit, input_shape, "
        "min_top1, max_error, max_bytes)"
    )


# --- one bad line, one problem --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            'colour = "red"',
            "project.colour: unknown key (allowed: name, out, targets, cache_dir, verify, "
            "brotli_quality, shard_bytes)",
        ),
        ("out = 3", "project.out: expected a string, got 3 (integer)"),
        ('verify = "yes"', 'project.verify: expected true or false, got "yes" (string)'),
        ('targets = "web"', 'project.targets: expected an array, got "web" (string)'),
        (
            "brotli_quality = true",
            "project.brotli_quality: expected an integer, got true (boolean)",
        ),
        ("shard_bytes = 1.5", "project.shard_bytes: expected an integer, got 1.5 (float)"),
        (
            'targets = ["web", "wechta"]',
            'project.targets[1]: "wechta" is not a target; expected "wechat", "web", "tflite" '
            'or "keras" (did you mean "wechat"?)',
        ),
        (
            'targets = ["ios"]',
            'project.targets[0]: "ios" is not a target; expected "wechat", "web", "tflite" '
            'or "keras"',
        ),
        ('targets = ["web", "web"]', 'project.targets[1]: "web" is listed twice'),
        (
            "targets = []",
            'project.targets: no target; expected one or more of "wechat", "web", "tflite" '
            'or "keras"',
        ),
    ],
    ids=[
        "unknown-key-lists-the-allowed-keys",
        "out-not-a-string",
        "verify-not-a-boolean",
        "targets-not-an-array",
        "brotli-quality-not-an-integer",
        "shard-bytes-not-an-integer",
        "misspelt-target-did-you-mean",
        "unknown-target",
        "target-listed-twice",
        "no-target",
    ],
)
def test_one_bad_project_line_is_one_problem(project: Path, line: str, problem: str) -> None:
    assert error_of(project, in_table("project", line)) == one_problem(problem)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('quantise = "uint8"', 'models[0].quantise: unknown key (did you mean "quantize"?)'),
        (
            'format = "graf"',
            'models[0].format: "graf" is not allowed; expected "graph" or "layers" '
            '(did you mean "graph"?)',
        ),
        (
            'format = "onnx"',
            'models[0].format: "onnx" is not allowed; expected "graph" or "layers"',
        ),
        (
            'quantize = "unit8"',
            'models[0].quantize: "unit8" is not allowed; expected "none", "float16", "uint16", '
            '"uint8" or "auto", or a table of weight-name patterns per dtype (did you mean '
            '"uint8"?)',
        ),
        (
            'quantize = {int4 = ["*"]}',
            'models[0].quantize.int4: unknown key (did you mean "uint8"?)',
        ),
        (
            "quantize = {uint8 = []}",
            "models[0].quantize.uint8: expected an array of weight-name patterns such as "
            '["dense*"], got []',
        ),
        (
            "quantize = {}",
            'models[0].quantize: empty table; name at least one of "float16", "uint16" or "uint8"',
        ),
    ],
    ids=[
        "unknown-key-did-you-mean",
        "misspelt-format-did-you-mean",
        "unknown-format-lists-the-choices",
        "misspelt-quantize-dtype-did-you-mean",
        "quantize-table-unknown-dtype-did-you-mean",
        "quantize-table-without-patterns",
        "quantize-empty-table",
    ],
)
def test_one_bad_model_line_is_one_problem(project: Path, line: str, problem: str) -> None:
    assert error_of(project, in_model(line)) == one_problem(problem)


@pytest.mark.parametrize(
    ("table", "line", "problem"),
    [
        (
            "wechat",
            'remote_base_url = "http://cdn.example.com/m"',
            'wechat.remote_base_url: "http://cdn.example.com/m" is not an https:// URL '
            "(WeChat downloads over HTTPS only)",
        ),
        (
            "wechat.limits",
            "subpackage_byte = 1",
            'wechat.limits.subpackage_byte: unknown key (did you mean "subpackage_bytes"?)',
        ),
        (
            "wechat.limits",
            "subpackage_bytes = 0",
            "wechat.limits.subpackage_bytes: 0 must be greater than 0",
        ),
        (
            "wechat.limits",
            "subpackage_reserve_bytes = 2097152",
            "wechat.limits.subpackage_reserve_bytes: 2097152 leaves no room for weights in a "
            "subpackage of 2097152 bytes",
        ),
    ],
    ids=[
        "remote-base-url-not-https",
        "unknown-limit-did-you-mean",
        "zero-limit",
        "reserve-fills-the-subpackage",
    ],
)
def test_one_bad_wechat_line_is_one_problem(
    project: Path, table: str, line: str, problem: str
) -> None:
    assert error_of(project, in_table(table, line)) == one_problem(problem)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (in_table("projet", 'name = "x"'), 'projet: unknown key (did you mean "project"?)'),
        ('[project]\nname = "x"\n', "models: required: add at least one [[models]] table"),
        ('[[models]]\nname = "digits"\n', "models[0].source: required"),
        (
            '[[models]]\nname = "Digits"\nsource = "models/starter/model.json"\n\n'
            '[[models]]\nname = "digits"\nsource = "models/starter/model.json"\n',
            'models[1].name: "digits" is already the name of models[0]; '
            "model names must be unique (ignoring case)",
        ),
    ],
    ids=[
        "unknown-top-level-table-did-you-mean",
        "no-models",
        "model-without-source",
        "model-name-twice-ignoring-case",
    ],
)
def test_bad_manifest_is_one_problem(project: Path, text: str, problem: str) -> None:
    assert error_of(project, text) == one_problem(problem)


# --- model names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml_value", "shown"),
    [
        ('"../x"', '"../x"'),
        ('"a/b"', '"a/b"'),
        ("'a\"b'", '"a\\"b"'),
        ('""', '""'),
        ('"1st"', '"1st"'),
    ],
    ids=["dot-dot", "slash", "double-quote", "empty", "leading-digit"],
)
def test_unsafe_model_name_is_rejected(project: Path, toml_value: str, shown: str) -> None:
    text = f'[[models]]\nname = {toml_value}\nsource = "models/starter/model.json"\n'
    assert error_of(project, text) == one_problem(f"models[0].name: {shown} {SAFE_NAME_RULE}")


# --- sources --------------------------------------------------------------------------------


def test_missing_source_names_the_resolved_path(project: Path) -> None:
    text = '[[models]]\nname = "digits"\nsource = "models/missing.h5"\n'
    assert error_of(project, text) == one_problem(
        f'models[0].source: "models/missing.h5": not found ({project / "models/missing.h5"})'
    )


def test_layers_format_from_a_tfjs_graph_model_is_rejected(project: Path) -> None:
    write_graph_model(project / "models" / "graph")
    text = '[[models]]\nname = "g"\nsource = "models/graph/model.json"\nformat = "layers"\n'
    assert error_of(project, text) == one_problem(
        'models[0].format: "layers" cannot be made from a TensorFlow.js graph model '
        '("models/graph/model.json"); use format = "graph"'
    )


# --- several problems -----------------------------------------------------------------------


def test_every_problem_is_reported_at_once_in_manifest_order(project: Path) -> None:
    text = (
        "[project]\n"
        "out = 3\n"
        'targets = ["web", "ios"]\n'
        "\n"
        "[[models]]\n"
        'name = "a/b"\n'
        'source = "models/starter/model.json"\n'
        'format = "graf"\n'
        'quantise = "uint8"\n'
        "\n"
        "[[models]]\n"
        'name = "second"\n'
    )
    assert error_of(project, text) == (
        "bundle.toml has 6 problems:\n"
        "  - project.out: expected a string, got 3 (integer)\n"
        '  - project.targets[1]: "ios" is not a target; expected "wechat", "web", "tflite" '
        'or "keras"\n'
        '  - models[0].quantise: unknown key (did you mean "quantize"?)\n'
        f'  - models[0].name: "a/b" {SAFE_NAME_RULE}\n'
        '  - models[0].format: "graf" is not allowed; expected "graph" or "layers" '
        '(did you mean "graph"?)\n'
        "  - models[1].source: required"
    )


# --- quantize -------------------------------------------------------------------------------


def test_quantize_table_with_fallthrough_is_accepted(project: Path) -> None:
    text = f'[[models]]\n{STARTER}quantize = {{uint8 = ["dense*"], float16 = ["*"]}}\n'
    config = manifest.load(write(project, text))
    assert config.models[0].quantize == Quantize(
        {"float16": ["*"], "uint8": ["dense*"]},
        (("float16", ("*",)), ("uint8", ("dense*",))),
    )
    assert not config.models[0].quantize.is_none


def test_quantize_dtype_string_quantizes_every_weight(project: Path) -> None:
    config = manifest.load(write(project, f'[[models]]\n{STARTER}quantize = "uint16"\n'))
    assert config.models[0].quantize == Quantize("uint16", (("uint16", ("*",)),))


# --- [wechat] -------------------------------------------------------------------------------


def test_wechat_limit_overrides_are_accepted(project: Path) -> None:
    text = (
        "[wechat.limits]\nsubpackage_bytes = 1048576\nsubpackage_reserve_bytes = 8192\n\n"
        f"[[models]]\n{STARTER}"
    )
    config = manifest.load(write(project, text))
    assert config.wechat.limits.subpackage_bytes == 1048576
    assert config.wechat.limits.shard_budget_bytes == 1048576 - 8192
    assert config.wechat.limits.total_bytes == limits.WechatLimits().total_bytes


def test_https_remote_base_url_gets_a_trailing_slash(project: Path) -> None:
    text = f'[wechat]\nremote_base_url = "https://cdn.example.com/m"\n\n[[models]]\n{STARTER}'
    config = manifest.load(write(project, text))
    assert config.wechat.remote_base_url == "https://cdn.example.com/m/"


# --- paths and defaults ---------------------------------------------------------------------


def test_paths_are_resolved_against_the_manifest_folder_not_the_cwd(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(project, f'[project]\nout = "build/out"\n\n[[models]]\n{STARTER}')
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = manifest.load(os.path.relpath(path))
    assert config.path.resolve() == path
    assert config.project.out.resolve() == project / "build" / "out"
    assert config.project.cache_dir.resolve() == project / ".bundler-cache"
    assert config.models[0].source.resolve() == project / "models" / "starter" / "model.json"
    assert config.models[0].input.kind == sources.TFJS_LAYERS


def test_paths_read_through_a_relative_manifest_path_are_normalized(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `bundler build ../app/bundle.toml` should not carry "elsewhere/../app" into every path.
    path = write(project, f"[[models]]\n{STARTER}")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = manifest.load(os.path.relpath(path))
    assert config.path == path
    assert config.root == project
    assert config.project.out == project / "dist"
    assert config.models[0].source == project / "models" / "starter" / "model.json"


def test_defaults(project: Path) -> None:
    config = manifest.load(write(project, f"[[models]]\n{STARTER}"))
    assert config.project.name == project.name
    assert config.project.targets == ("wechat", "web")
    assert config.project.out == project / "dist"
    assert config.project.verify is True
    assert config.project.brotli_quality == limits.DEFAULT_SHARD_BROTLI_QUALITY
    assert config.project.shard_bytes is None
    assert config.wechat == manifest.WechatConfig()
    assert config.web == manifest.WebConfig()
    assert config.tfjs_versions() == ("3.21.0", "4.22.0")
    (model,) = config.models
    assert model.name == "digits"
    assert model.format == "graph"
    assert model.quantize == Quantize("none")
    assert model.quantize.is_none
    assert model.delivery == "auto"
    assert model.preload == ()
    assert model.verify is True
    assert model.shard_bytes is None
    assert model.input.kind == sources.TFJS_LAYERS


def test_a_folder_is_read_as_its_bundle_toml(project: Path) -> None:
    write(project, f"[[models]]\n{STARTER}")
    assert manifest.load(project).path == project / "bundle.toml"


# --- shard_cap ------------------------------------------------------------------------------


WECHAT_BUDGET = 2 * 1024 * 1024 - 16 * 1024


@pytest.mark.parametrize(
    ("project_lines", "model_lines", "cap"),
    [
        ("", "", WECHAT_BUDGET),
        ('targets = ["web"]', "", 4 * 1024 * 1024),
        ('targets = ["wechat"]', "", WECHAT_BUDGET),
        ("shard_bytes = 100000", "", 100000),
        ("shard_bytes = 100000", "shard_bytes = 50000", 50000),
        ("shard_bytes = 50000", "shard_bytes = 100000", 50000),
        ('targets = ["web"]\nshard_bytes = 8388608', "", 4 * 1024 * 1024),
    ],
)
def test_shard_cap_is_the_smallest_budget(
    project: Path, project_lines: str, model_lines: str, cap: int
) -> None:
    text = f"[project]\n{project_lines}\n\n[[models]]\n{STARTER}{model_lines}\n"
    config = manifest.load(write(project, text))
    assert config.shard_cap(config.models[0]) == cap


def test_shard_cap_follows_a_smaller_wechat_subpackage(project: Path) -> None:
    text = f"[wechat.limits]\nsubpackage_bytes = 1048576\n\n[[models]]\n{STARTER}"
    config = manifest.load(write(project, text))
    assert config.shard_cap(config.models[0]) == 1048576 - 16 * 1024


# --- out must not swallow the project -------------------------------------------------------


@pytest.mark.parametrize("out", ["models", "models/starter", "../{name}"])
def test_out_that_would_replace_the_sources_or_the_manifest_is_rejected(
    project: Path, out: str
) -> None:
    # `out` is replaced whole on each build: pointing it at the folder holding a source or the
    # manifest would delete them.
    text = f'[project]\nout = "{out.format(name=project.name)}"\n\n[[models]]\n{STARTER}'
    message = error_of(project, text)
    assert message.startswith("bundle.toml has 1 problem:\n  - project.out: ")


# --- sources.detect -------------------------------------------------------------------------


def detect_problem(path: Path) -> str:
    with pytest.raises(sources.SourceProblem) as info:
        sources.detect(path)
    return str(info.value)


def test_empty_h5_file(tmp_path: Path) -> None:
    (tmp_path / "m.h5").write_bytes(b"")
    assert detect_problem(tmp_path / "m.h5") == "the file is empty"


def test_h5_file_that_is_not_hdf5(tmp_path: Path) -> None:
    (tmp_path / "m.h5").write_bytes(os.urandom(256))
    # The reason in parentheses is h5py's own first line.
    assert detect_problem(tmp_path / "m.h5").startswith("not a readable HDF5 file (")


def test_weights_only_h5_says_to_save_the_whole_model(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.attrs["backend"] = "tensorflow"
    assert detect_problem(tmp_path / "w.h5") == (
        "the file holds weights only (save_weights); save the whole model with "
        "model.save(...) so its architecture is included"
    )


def test_h5_without_a_keras_model(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = [1, 2, 3]
    assert detect_problem(tmp_path / "d.h5") == (
        "the HDF5 file holds no Keras model (no model_config)"
    )


def test_h5_with_model_config_is_a_keras_h5(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f.attrs["model_config"] = "{}"
        f.attrs["keras_version"] = "2.19.0"
    assert sources.detect(tmp_path / "k.h5") == sources.Source(
        tmp_path / "k.h5", sources.KERAS_H5, keras_version="2.19.0"
    )


def test_folder_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert detect_problem(tmp_path) == (
        "the folder has no saved_model.pb or model.json; expected a Keras .h5 or .keras file, "
        "a SavedModel folder, or a TensorFlow.js model.json"
    )


def test_saved_model_folder(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01")
    assert sources.detect(tmp_path) == sources.Source(tmp_path, sources.SAVED_MODEL)


def test_text_file_is_an_unknown_kind(tmp_path: Path) -> None:
    (tmp_path / "model.txt").write_text("weights")
    assert detect_problem(tmp_path / "model.txt") == (
        "unknown kind of file .txt; expected a Keras .h5 or .keras file, a SavedModel folder, "
        "or a TensorFlow.js model.json"
    )


def test_json_that_is_not_a_tfjs_model(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"hello": 1}')
    assert detect_problem(tmp_path / "model.json") == (
        "not a TensorFlow.js model.json (expected modelTopology and weightsManifest)"
    )


@pytest.mark.parametrize(
    ("topology", "kind"),
    [
        ({"node": [], "versions": {"producer": 27}}, sources.TFJS_GRAPH),
        ({"model_config": {"class_name": "Sequential"}}, sources.TFJS_LAYERS),
    ],
)
def test_model_json_without_format_is_told_apart_by_its_topology(
    tmp_path: Path, topology: dict[str, object], kind: str
) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"modelTopology": topology, "weightsManifest": []}))
    assert sources.detect(path) == sources.Source(path, kind)
    assert sources.detect(tmp_path) == sources.Source(path, kind)
