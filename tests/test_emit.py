"""emit.write_tree: a whole tree swapped in, nothing written when nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler import emit

FIRST = {
    "bundle-report.json": b'{"models": []}\n',
    "models/a/1234/model.json": b"{}",
    "models/a/1234/group1-shard1of1.bin": b"\x00\x01\x02",
}
SECOND = {
    "bundle-report.json": b'{"models": ["b"]}\n',
    "models/b/5678/model.json": b'{"b": 1}',
}


def tree(folder: Path) -> dict[str, bytes]:
    """The files under `folder`, less the record of what the build wrote."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != emit.OWNED
    }


def mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*")}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".dist."))


def test_writes_a_fresh_tree(tmp_path: Path) -> None:
    out = tmp_path / "site" / "dist"
    assert emit.write_tree(out, FIRST) is True
    assert tree(out) == FIRST
    assert leftovers(out.parent) == []


def test_identical_tree_is_not_touched(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    emit.write_tree(out, FIRST)
    before = mtimes(out)
    inode = out.stat().st_ino
    assert emit.write_tree(out, dict(FIRST)) is False
    assert mtimes(out) == before
    assert out.stat().st_ino == inode
    assert leftovers(tmp_path) == []


def test_a_changed_byte_rewrites_the_tree(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    emit.write_tree(out, FIRST)
    changed = {**FIRST, "models/a/1234/model.json": b"[]"}
    assert emit.write_tree(out, changed) is True
    assert tree(out) == changed


def test_what_the_build_wrote_is_replaced_whole_and_the_rest_kept(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    emit.write_tree(out, FIRST)
    # What DevTools and the user add: a file at the top, one inside a generated folder, an
    # empty folder, a symlink.
    (out / "project.private.config.json").write_text('{"setting": {}}')
    (out / "models" / "a" / "notes.txt").write_text("mine")
    (out / "tfjs" / "node_modules").mkdir(parents=True)
    (out / "link").symlink_to("models")
    assert emit.write_tree(out, SECOND) is True
    assert tree(out) == {
        **SECOND,
        "project.private.config.json": b'{"setting": {}}',
        "models/a/notes.txt": b"mine",
    }
    assert not (out / "models" / "a" / "1234").exists()
    assert (out / "tfjs" / "node_modules").is_dir()
    assert (out / "link").is_symlink() and str((out / "link").readlink()) == "models"
    assert emit.foreign(out) == [
        "link",
        "models/a/notes.txt",
        "project.private.config.json",
        "tfjs/node_modules/",
    ]
    assert leftovers(tmp_path) == []


def test_a_file_added_beside_the_bundle_is_no_change(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    emit.write_tree(out, FIRST)
    (out / "stray.txt").write_text("left by hand")
    assert emit.write_tree(out, FIRST) is False
    assert tree(out) == {**FIRST, "stray.txt": b"left by hand"}


def test_a_generated_file_removed_by_hand_is_a_change(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    emit.write_tree(out, FIRST)
    (out / "models/a/1234/model.json").unlink()
    assert emit.write_tree(out, FIRST) is True
    assert tree(out) == FIRST


def test_an_older_bundle_without_a_record_is_all_the_builds(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    emit.write_tree(out, FIRST)
    (out / emit.OWNED).unlink()
    (out / "stray.txt").write_text("from an older build")
    assert emit.write_tree(out, SECOND) is True
    assert tree(out) == SECOND


def test_tree_is_replaced_whole_without_an_atomic_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(emit, "_exchange", lambda a, b: False)
    out = tmp_path / "dist"
    emit.write_tree(out, FIRST)
    assert emit.write_tree(out, SECOND) is True
    assert tree(out) == SECOND
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]


def test_failure_midway_leaves_the_old_tree_and_no_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "dist"
    emit.write_tree(out, FIRST)
    before = mtimes(out)
    real_write_bytes = Path.write_bytes
    written: list[Path] = []

    def failing_write_bytes(self: Path, data: bytes) -> int:
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(self)
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing_write_bytes)
    many = {f"models/m/{i:02}.bin": bytes([i]) * 10 for i in range(6)}
    with pytest.raises(OSError, match="No space left"):
        emit.write_tree(out, many)
    monkeypatch.undo()

    assert len(written) == 2
    assert all(not p.is_relative_to(out) for p in written)
    assert tree(out) == FIRST
    assert mtimes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]


def test_first_write_failing_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_write_bytes(self: Path, data: bytes) -> int:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", failing_write_bytes)
    with pytest.raises(OSError):
        emit.write_tree(tmp_path / "dist", FIRST)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_unchanged_compares_names_and_bytes(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    assert emit.unchanged(out, FIRST) is False
    emit.write_tree(out, FIRST)
    assert emit.unchanged(out, FIRST) is True
    assert emit.unchanged(out, {**FIRST, "bundle-report.json": b'{"models": [1]}\n'}) is False
    assert emit.unchanged(out, {k: v for k, v in FIRST.items() if k != "bundle-report.json"}) is (
        False
    )


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/x", "a//b", "a/./b", "a\\..\\b"])
def test_a_path_out_of_the_tree_is_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(emit.BundlerError) as info:
        emit.write_tree(tmp_path / "out", {"ok.txt": b"ok", rel: b"x"})
    assert (
        str(info.value) == f"refusing to write {rel!r}: not a plain path inside {tmp_path / 'out'}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
