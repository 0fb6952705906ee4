"""cache.fingerprint from content and options; Cache entries that check themselves."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bundler.manifest import ModelConfig, Quantize
from bundler.models import cache, sources
from bundler.models.artifacts import content_hash
from bundler.models.cache import Cache

OPTIONS = {"shard_cap": 2080768, "brotli_quality": 9}


def model_for(
    path: Path, kind: str, fmt: str = "graph", quantize: Quantize | None = None
) -> ModelConfig:
    return ModelConfig(
        name="m",
        source=path,
        input=sources.Source(path, kind),
        format=fmt,
        quantize=quantize or Quantize("none"),
        delivery="auto",
        preload=(),
        verify=True,
        shard_bytes=None,
    )


def saved_model(folder: Path) -> Path:
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph-def")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00" * 64)
    return folder


def tfjs_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    doc = {
        "format": "graph-model",
        "modelTopology": {"node": []},
        "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": []}],
    }
    (folder / "model.json").write_text(json.dumps(doc))
    (folder / "group1-shard1of1.bin").write_bytes(b"\x01\x02\x03\x04")
    return folder / "model.json"


# --- fingerprint ----------------------------------------------------------------------------


def test_fingerprint_is_stable(tmp_path: Path) -> None:
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"hdf5 bytes")
    model = model_for(h5, sources.KERAS_H5)
    first = cache.fingerprint(model, OPTIONS)
    assert cache.fingerprint(model, dict(OPTIONS)) == first
    assert cache.fingerprint(model_for(h5, sources.KERAS_H5), OPTIONS) == first
    assert len(first) == 64


def test_fingerprint_changes_with_the_source_bytes(tmp_path: Path) -> None:
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"hdf5 bytes")
    model = model_for(h5, sources.KERAS_H5)
    before = cache.fingerprint(model, OPTIONS)
    h5.write_bytes(b"hdf5 bytEs")
    assert cache.fingerprint(model, OPTIONS) != before


def test_fingerprint_ignores_the_mtime(tmp_path: Path) -> None:
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"hdf5 bytes")
    model = model_for(h5, sources.KERAS_H5)
    before = cache.fingerprint(model, OPTIONS)
    os.utime(h5, (1_000_000, 1_000_000))
    assert cache.fingerprint(model, OPTIONS) == before


@pytest.mark.parametrize(
    "changed",
    [
        {"quantize": Quantize("uint8", (("uint8", ("*",)),))},
        {"quantize": Quantize("float16", (("float16", ("*",)),))},
        {"fmt": "layers"},
    ],
    ids=["uint8", "float16", "layers"],
)
def test_fingerprint_changes_with_the_options_that_shape_the_output(
    tmp_path: Path, changed: dict[str, Any]
) -> None:
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"hdf5 bytes")
    before = cache.fingerprint(model_for(h5, sources.KERAS_H5), OPTIONS)
    assert cache.fingerprint(model_for(h5, sources.KERAS_H5, **changed), OPTIONS) != before


def test_fingerprint_changes_with_the_quantize_patterns(tmp_path: Path) -> None:
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"hdf5 bytes")
    dense = Quantize({"uint8": ["dense*"]}, (("uint8", ("dense*",)),))
    conv = Quantize({"uint8": ["conv*"]}, (("uint8", ("conv*",)),))
    assert cache.fingerprint(model_for(h5, sources.KERAS_H5, quantize=dense), OPTIONS) != (
        cache.fingerprint(model_for(h5, sources.KERAS_H5, quantize=conv), OPTIONS)
    )


def test_fingerprint_changes_with_the_build_options(tmp_path: Path) -> None:
    h5 = tmp_path / "m.h5"
    h5.write_bytes(b"hdf5 bytes")
    model = model_for(h5, sources.KERAS_H5)
    assert cache.fingerprint(model, OPTIONS) != cache.fingerprint(
        model, {**OPTIONS, "shard_cap": 1024}
    )


def test_fingerprint_changes_when_a_file_inside_a_saved_model_changes(tmp_path: Path) -> None:
    folder = saved_model(tmp_path / "sm")
    model = model_for(folder, sources.SAVED_MODEL)
    before = cache.fingerprint(model, OPTIONS)
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(b"\x00" * 63 + b"\x01")
    after = cache.fingerprint(model, OPTIONS)
    assert after != before
    (folder / "assets").mkdir()
    (folder / "assets" / "vocab.txt").write_text("a\nb\n")
    assert cache.fingerprint(model, OPTIONS) != after


def test_fingerprint_of_a_saved_model_does_not_depend_on_where_it_is(tmp_path: Path) -> None:
    one = model_for(saved_model(tmp_path / "a" / "sm"), sources.SAVED_MODEL)
    two = model_for(saved_model(tmp_path / "b" / "sm"), sources.SAVED_MODEL)
    assert cache.fingerprint(one, OPTIONS) == cache.fingerprint(two, OPTIONS)


def test_fingerprint_of_a_saved_model_leaves_out_dot_files(tmp_path: Path) -> None:
    one = model_for(saved_model(tmp_path / "a" / "sm"), sources.SAVED_MODEL)
    two = model_for(saved_model(tmp_path / "b" / "sm"), sources.SAVED_MODEL)
    (tmp_path / "b" / "sm" / ".DS_Store").write_bytes(b"Finder")
    (tmp_path / "b" / "sm" / "variables" / ".saved_model.pb.swp").write_bytes(b"vim")
    assert cache.fingerprint(one, OPTIONS) == cache.fingerprint(two, OPTIONS)


def test_fingerprint_of_a_tfjs_model_covers_its_shards(tmp_path: Path) -> None:
    model_json = tfjs_model(tmp_path / "tfjs")
    model = model_for(model_json, sources.TFJS_GRAPH)
    before = cache.fingerprint(model, OPTIONS)
    (model_json.parent / "group1-shard1of1.bin").write_bytes(b"\x01\x02\x03\x05")
    assert cache.fingerprint(model, OPTIONS) != before
    assert cache.source_files(model) == [model_json, model_json.parent / "group1-shard1of1.bin"]
    assert cache.source_bytes(model) == model_json.stat().st_size + 4


# --- entries --------------------------------------------------------------------------------


KEY = "ab" * 32
FILES = {
    "group1-shard1of1.bin": b"\x00\x01\x02\x03",
    "group1-shard1of1.bin.br": b"brotli",
    "model.json": b'{"format":"graph-model"}',
    "model.json.br": b"brotli json",
}
META = {"params": 4, "errors": {}}
INPUTS = [("x", np.arange(6, dtype=np.float32).reshape(2, 3))]
REFERENCE = [np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)]


@pytest.fixture
def store(tmp_path: Path) -> Cache:
    store = Cache(tmp_path / ".bundler-cache")
    store.put(KEY, FILES, META, INPUTS, REFERENCE)
    return store


def test_put_then_get_round_trips_files_meta_and_verify_data(store: Cache) -> None:
    entry = store.get(KEY)
    assert entry is not None
    assert entry.folder == store.folder(KEY)
    assert list(entry.files) == [
        "model.json",
        "group1-shard1of1.bin",
        "group1-shard1of1.bin.br",
        "model.json.br",
    ]
    assert {name: entry.read(name) for name in entry.files} == FILES
    # The folder a build names after the entry comes from its bytes, not from its key.
    assert entry.content_hash == content_hash(
        {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    )
    assert entry.meta["params"] == 4
    assert entry.meta["errors"] == {}
    inputs, outputs = entry.verify_data()
    assert [name for name, _ in inputs] == ["x"]
    np.testing.assert_array_equal(inputs[0][1], INPUTS[0][1])
    assert inputs[0][1].dtype == np.float32
    assert len(outputs) == 1
    np.testing.assert_array_equal(outputs[0], REFERENCE[0])


def test_entry_without_reference_outputs(tmp_path: Path) -> None:
    store = Cache(tmp_path)
    store.put(KEY, FILES, META, INPUTS, [])
    entry = store.get(KEY)
    assert entry is not None
    inputs, outputs = entry.verify_data()
    assert len(inputs) == 1
    assert outputs == []


def test_unknown_key_is_a_miss(store: Cache) -> None:
    assert store.get("cd" * 32) is None


def test_put_replaces_an_entry(store: Cache) -> None:
    store.put(KEY, {"model.json": b"{}"}, META, [], [])
    entry = store.get(KEY)
    assert entry is not None
    assert list(entry.files) == ["model.json"]
    assert sorted(p.name for p in store.folder(KEY).iterdir()) == [
        "entry.json",
        "model.json",
        "verify.npz",
    ]
    assert sorted(p.name for p in store.folder(KEY).parent.iterdir()) == [KEY]


def test_errors_recorded_on_an_entry_are_kept(store: Cache) -> None:
    entry = store.get(KEY)
    assert entry is not None
    updated = entry.with_errors({"3.21.0": 1e-6})
    assert updated.meta["errors"] == {"3.21.0": 1e-6}
    again = store.get(KEY)
    assert again is not None
    assert again.meta["errors"] == {"3.21.0": 1e-6}


def damage_a_file(folder: Path) -> None:
    (folder / "group1-shard1of1.bin").write_bytes(b"\x00\x01\x02\x04")


def truncate_entry_json(folder: Path) -> None:
    path = folder / cache.ENTRY_FILE
    path.write_bytes(path.read_bytes()[:20])


def delete_verify_npz(folder: Path) -> None:
    (folder / cache.VERIFY_FILE).unlink()


def delete_a_file(folder: Path) -> None:
    (folder / "model.json.br").unlink()


def truncate_verify_npz(folder: Path) -> None:
    path = folder / cache.VERIFY_FILE
    path.write_bytes(path.read_bytes()[:40])


def name_a_file_out_of_the_folder(folder: Path) -> None:
    """An entry.json (from a shared store anyone on the team can write) that names a file out
    of the entry's folder, one whose hash matches."""
    (folder.parent / "outside").write_bytes(b"secret")
    meta = json.loads((folder / cache.ENTRY_FILE).read_text())
    meta["files"]["../outside"] = hashlib.sha256(b"secret").hexdigest()
    (folder / cache.ENTRY_FILE).write_text(json.dumps(meta))


def name_a_missing_shard(folder: Path) -> None:
    """A model.json whose weights name a file the entry does not list (its own hash is right)."""
    doc = {"format": "graph-model", "weightsManifest": [{"paths": ["../../outside.bin"]}]}
    data = json.dumps(doc).encode()
    (folder / "model.json").write_bytes(data)
    meta = json.loads((folder / cache.ENTRY_FILE).read_text())
    meta["files"]["model.json"] = hashlib.sha256(data).hexdigest()
    (folder / cache.ENTRY_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage",
    [
        damage_a_file,
        truncate_entry_json,
        delete_verify_npz,
        delete_a_file,
        truncate_verify_npz,
        name_a_file_out_of_the_folder,
        name_a_missing_shard,
    ],
)
def test_damaged_entry_is_a_miss_and_is_removed(store: Cache, damage: Any) -> None:
    damage(store.folder(KEY))
    assert store.get(KEY) is None
    assert not store.folder(KEY).exists()
    # The next build can store it again.
    store.put(KEY, FILES, META, INPUTS, REFERENCE)
    assert store.get(KEY) is not None


def test_derived_files_are_made_once_and_kept(tmp_path: Path) -> None:
    store = Cache(tmp_path / ".bundler-cache")
    made: list[int] = []

    def make() -> dict[str, bytes]:
        made.append(1)
        return {"runtime.js": b"code", "runtime.json": b"{}"}

    assert store.derived("runtimes", "k1", ["runtime.js", "runtime.json"], make) == {
        "runtime.js": b"code",
        "runtime.json": b"{}",
    }
    assert store.derived("runtimes", "k1", ["runtime.js", "runtime.json"], make) == {
        "runtime.js": b"code",
        "runtime.json": b"{}",
    }
    assert len(made) == 1
    assert (tmp_path / ".bundler-cache" / "runtimes" / "k1" / "runtime.js").read_bytes() == b"code"


@pytest.mark.parametrize("damage", ["bytes", "index", "missing", "incomplete"])
def test_damaged_derived_files_are_made_again(tmp_path: Path, damage: str) -> None:
    store = Cache(tmp_path / ".bundler-cache")
    store.derived("compressed", "k1", ["form"], lambda: {"form": b"squeezed"})
    folder = tmp_path / ".bundler-cache" / "compressed" / "k1"
    if damage == "bytes":
        (folder / "form").write_bytes(b"other")
    elif damage == "index":
        (folder / cache.DERIVED_INDEX).write_text("{")
    elif damage == "incomplete":
        (folder / cache.DERIVED_INDEX).write_text("{}")
    else:
        (folder / "form").unlink()
    assert store.derived("compressed", "k1", ["form"], lambda: {"form": b"again"}) == {
        "form": b"again"
    }
    assert store.derived("compressed", "k1", ["form"], lambda: {"form": b"third"}) == {
        "form": b"again"
    }


def test_derived_files_in_a_cache_that_cannot_be_written(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    store = Cache(blocked / ".bundler-cache")
    assert store.derived("compressed", "k1", ["form"], lambda: {"form": b"made"}) == {
        "form": b"made"
    }


def test_an_entry_removed_by_another_build_is_updated_in_memory_only(store: Cache) -> None:
    entry = store.get(KEY)
    assert entry is not None
    import shutil

    shutil.rmtree(store.folder(KEY))
    updated = entry.with_errors({"4.22.0": {"max_abs_error": 0.0}})
    assert updated.meta["errors"] == {"4.22.0": {"max_abs_error": 0.0}}
    assert not store.folder(KEY).exists()
    assert [p.name for p in store.folder(KEY).parent.iterdir()] == []


def test_an_update_replaces_the_folder_whole_and_links_the_rest(store: Cache) -> None:
    entry = store.get(KEY)
    assert entry is not None
    shard = store.folder(KEY) / "group1-shard1of1.bin"
    inode = shard.stat().st_ino
    entry.with_reference(REFERENCE, "tfjs 4.22.0")
    again = store.get(KEY)
    assert again is not None and again.meta["reference_from"] == "tfjs 4.22.0"
    assert shard.stat().st_ino == inode, "unchanged files are linked, not copied"
    assert [p.name for p in store.folder(KEY).parent.iterdir()] == [KEY]
