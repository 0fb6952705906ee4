"""The command line: version, usage, `init` then `build`, and `python -m bundler`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_node

from bundler import __version__, manifest
from bundler.cli import main

# The build's warning while [wechat] appid is the tourist appid, word for word.
TOURIST_WARNING = (
    'wechat.appid is "touristappid", under which WeChat runs no plugin: tfjsPlugin fails with '
    '"插件未授权使用" (plugin not authorized). Set it to your mini-program\'s appid, and add '
    "tfjsPlugin (wx6afed118d9e81df9) to that appid at "
    "mp.weixin.qq.com → 设置 → 第三方设置 → 插件管理"
)
PLACEHOLDER_NOTE = (
    'note: [wechat] appid is the placeholder "touristappid", under which tfjsPlugin does not '
    "run; put your mini-program's appid in {}"
)
PROMPT = 'WeChat appid ("wx" and 16 hex digits; Enter for the "touristappid" placeholder): '


class Terminal(io.StringIO):
    """Standard input that says it is a terminal, holding what the user types."""

    def isatty(self) -> bool:
        return True


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
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # not a terminal: init asks nothing
    assert main(["init", "myapp"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "wrote myapp/bundle.toml",
        "wrote myapp/models/starter/model.json",
        PLACEHOLDER_NOTE.format("myapp/bundle.toml"),
        "next: bundler build myapp/bundle.toml",
    ]

    assert main(["build", "myapp/bundle.toml", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["targets"] == ["wechat", "web"]
    assert report["models"][0]["name"] == "starter"
    assert report["warnings"] == [TOURIST_WARNING]  # the placeholder builds, and is named
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
    assert [line for line in out.splitlines() if "warning" in line] == [
        f"warning: {TOURIST_WARNING}"
    ]


def test_a_rebuild_keeps_what_devtools_and_the_user_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """dist/wechat/ is opened in DevTools, which writes beside the build: every rebuild keeps it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    assert main(["init", "myapp"]) == 0
    assert main(["build", "myapp/bundle.toml"]) == 0
    wechat = tmp_path / "myapp" / "dist" / "wechat"
    theirs = {
        wechat / "project.private.config.json": b'{"setting": {"urlCheck": false}}',
        wechat / "notes" / "todo.md": b"ship it",
        wechat / "pages" / "starter" / "mine.wxss": b".x{}",  # inside a generated folder
    }
    for path, data in theirs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    capsys.readouterr()

    assert main(["build", "myapp/bundle.toml"]) == 0  # nothing changed: nothing written
    assert "nothing written" in capsys.readouterr().out

    manifest = tmp_path / "myapp" / "bundle.toml"
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(text.replace('quantize = "none"', 'quantize = "float16"'), "utf-8")
    assert main(["build", "myapp/bundle.toml"]) == 0
    assert "nothing written" not in capsys.readouterr().out
    for path, data in theirs.items():
        assert path.read_bytes() == data, path
    owned = json.loads((tmp_path / "myapp" / "dist" / ".bundler-owned.json").read_text())
    assert not any("private" in f or "notes/" in f or "mine.wxss" in f for f in owned["files"])
    assert (wechat / "tfjs" / "index.js").is_file() and not (
        wechat / "tfjs" / "package.json"
    ).exists()


def test_init_without_a_terminal_writes_a_placeholder_appid_that_builds_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("wx0123456789abcdef\n"))  # never read
    assert main(["init", "site"]) == 0
    text = (tmp_path / "site" / "bundle.toml").read_text(encoding="utf-8")
    assert '# !!! PLACEHOLDER: "touristappid" is not a real appid.' in text
    assert 'appid = "touristappid"           # PLACEHOLDER: your mini-program\'s appid' in text
    config = manifest.load(tmp_path / "site" / "bundle.toml")
    assert config.wechat.appid == "touristappid"
    assert config.warnings() == (TOURIST_WARNING,)


def test_the_tourist_appid_warns_only_where_the_wechat_target_declares_its_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "site", "--appid", "wx0123456789abcdef"]) == 0
    path = tmp_path / "site" / "bundle.toml"
    assert manifest.load(path).warnings() == ()
    text = path.read_text(encoding="utf-8").replace("wx0123456789abcdef", "touristappid")
    path.write_text(text.replace('targets = ["wechat", "web"]', 'targets = ["web"]'), "utf-8")
    assert manifest.load(path).warnings() == ()


def test_init_on_a_terminal_asks_for_the_appid_until_it_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", Terminal("wx12\n  wx0123456789abcdef \n"))
    assert main(["init", "site"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        PROMPT + '"wx12" is not an appid; expected "wx" and 16 hex digits, or "touristappid"; '
        "try again",
        PROMPT + "wrote site/bundle.toml",
        "wrote site/models/starter/model.json",
        "next: bundler build site/bundle.toml",
    ]
    text = (tmp_path / "site" / "bundle.toml").read_text(encoding="utf-8")
    assert 'appid = "wx0123456789abcdef"     # your mini-program\'s appid' in text
    assert "PLACEHOLDER" not in text
    assert "mp.weixin.qq.com → 设置 → 第三方设置 → 插件管理" in text
    config = manifest.load(tmp_path / "site" / "bundle.toml")
    assert config.wechat.appid == "wx0123456789abcdef"
    assert config.warnings() == ()


@pytest.mark.parametrize("typed", ["\n", "", "touristappid\n"], ids=["enter", "eof", "tourist"])
def test_init_on_a_terminal_keeps_the_placeholder_when_no_appid_is_given(
    typed: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", Terminal(typed))
    assert main(["init", "site"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(PROMPT) and lines[-2:] == [
        PLACEHOLDER_NOTE.format("site/bundle.toml"),
        "next: bundler build site/bundle.toml",
    ]
    assert manifest.load(tmp_path / "site" / "bundle.toml").warnings() == (TOURIST_WARNING,)


def test_init_with_a_bad_appid_is_a_usage_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "site", "--appid", "wx12"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        'error: --appid "wx12" is not an appid; expected "wx" and 16 hex digits, or "touristappid"'
    ]
    assert list(tmp_path.iterdir()) == []


def test_init_into_a_folder_with_a_manifest_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", Terminal("wx0123456789abcdef\n"))  # not asked: it fails first
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
