"""The command line: version, usage, `init` then `build`, and `python -m bundler`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_node

from bundler import __version__
from bundler.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"bundler {__version__}\n"


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: bundler ")
    assert "build" in captured.err and "init" in captured.err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@needs_node
def test_init_then_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "myapp"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "wrote myapp/bundle.toml",
        "wrote myapp/models/starter/model.json",
        "next: bundler build myapp/bundle.toml",
    ]

    assert main(["build", "myapp/bundle.toml", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["targets"] == ["wechat", "web"]
    assert report["models"][0]["name"] == "starter"
    assert report["warnings"] == []
    errors = report["models"][0]["max_abs_error"]
    assert sorted(errors) == ["3.21.0", "4.22.0"] and all(e is not None for e in errors.values())
    assert report["build"]["converted"] == ["starter"] and report["build"]["written"] is True
    for name in report["models"][0]["files"]:
        assert (tmp_path / "myapp" / "dist" / name).is_file()

    # Again, as a table: nothing to convert or write.
    assert main(["build", "myapp/bundle.toml"]) == 0
    out = capsys.readouterr().out
    assert "starter" in out and "cached" in out
    assert "myapp/dist is up to date" in out and "nothing written" in out


def test_init_into_a_folder_with_a_manifest_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "bundle.toml").write_text("# mine\n")
    assert main(["init", "site"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: site/bundle.toml already exists; `bundler init` writes only into a folder "
        "without a bundle.toml or models/starter"
    ]
    assert (tmp_path / "site" / "bundle.toml").read_text() == "# mine\n"
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == ["bundle.toml"]


def test_build_without_a_manifest_says_how_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["build"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: bundle.toml: no such file. Run `bundler init` to create a starter manifest."
    ]


def test_verbose_before_the_command_shows_tracebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `bundler -v build` and `bundler build -v` must mean the same.
    monkeypatch.chdir(tmp_path)
    assert main(["init", "."]) == 0
    (tmp_path / "models" / "starter" / "group1-shard1of1.bin").unlink()
    capsys.readouterr()
    assert main(["-v", "build"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_python_m_bundler_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bundler", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: bundler ")
    for command in ("build", "init"):
        assert command in proc.stdout


def test_console_script_version() -> None:
    script = Path(sys.executable).with_name("bundler")
    assert script.is_file(), "the bundler console script is not installed beside this Python"
    proc = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert (proc.returncode, proc.stdout) == (0, f"bundler {__version__}\n")
