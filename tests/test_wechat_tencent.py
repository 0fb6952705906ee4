"""Tencent's own checks on the WeChat project the example builds (issue 3, item 5).

- `miniprogram-ci` (WeChat DevTools' compiler, from npm) compiles the project offline, as upload
  would, and silently drops what upload does not keep: every generated file must come out.
- The project compiles exactly as generated: no package.json, no npm step, no packNpm; every
  package of the compiled project is within 2 MB (the tool checks no sizes offline: we sum
  them), and the plan's sizes are what the compiler makes of them.
- The glue type-checks with `tsc --checkJs` against `miniprogram-api-typings`, no DOM.

Offline means offline: tests/node/net_guard.js refuses every connection in the Node processes
and notes the attempts. The project's attributes come from `ci.DefaultProjectAttr` through the
Project's own `attr` (which CIProject.attr() prefers to asking Tencent with the key), and the
key is a throwaway RSA key made in the test's tmp dir. The one request miniprogram-ci still
makes, for the list of file types upload keeps, falls back to the list it ships.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_node

from bundler.targets.wechat import plan

pytestmark = [pytest.mark.slow, needs_node]

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "tests" / "node"
NODE_STAMP = NODE_DIR / "node_modules" / ".installed"  # the Makefile's node-test-deps stamp
CI_SCRIPT = NODE_DIR / "wechat_ci.js"
TSC = NODE_DIR / "node_modules" / "typescript" / "bin" / "tsc"
EXAMPLE = ROOT / "example_site"
NPM_FLAGS = ("--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error")

PACKAGE_LIMIT = 2 * 1024 * 1024  # one package, main or sub (official subpackages doc)
MAIN = "__APP__"
# miniprogram-ci asks servicewechat.com for the file types upload keeps and, refused, uses the
# list it ships (utils/white_ext_list.js); no other request is expected.
ALLOWED_REQUESTS = ("servicewechat.com:443/wxa/ci/getwhiteextlist",)
RUNTIME_ROOT = plan.RUNTIME_ROOT

# What the example does not exercise: a page preloading a model's subpackage (preloadRule),
# a model delivered from a CDN (no subpackage), and a model cut into several shards.
VARIANT_EDITS = (
    ('name = "digits"\n', 'preload = ["pages/index/index"]\n'),
    ('name = "digits_layers"\n', 'delivery = "remote"\n'),
    ('name = "digits_cnn"\n', "shard_bytes = 16384\n"),
    ('tfjs_version = "3.21.0"\n', 'remote_base_url = "https://models.example.com/digits/"\n'),
)

timings: dict[str, float] = {}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_tools() -> Path:
    """tests/node/node_modules, installed as `make node-test-deps` does when out of date."""
    package = NODE_DIR / "package.json"
    lock = NODE_DIR / "package-lock.json"
    newest = max(p.stat().st_mtime for p in (package, lock) if p.exists())
    if not NODE_STAMP.exists() or NODE_STAMP.stat().st_mtime < newest:
        _run(["npm", "install", *NPM_FLAGS], cwd=NODE_DIR, timeout=600, what="npm install")
        NODE_STAMP.touch()
    return NODE_DIR / "node_modules"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example site built by the real `bundler build` in a copy; returns its dist/."""
    site = tmp_path_factory.mktemp("example") / "site"
    shutil.copytree(
        EXAMPLE, site, ignore=shutil.ignore_patterns("dist", ".bundler-cache", "__pycache__")
    )
    started = time.monotonic()
    _run(
        [sys.executable, "-c", _BUNDLER, "build", str(site / "bundle.toml")],
        cwd=site,
        timeout=600,
        what="bundler build",
    )
    timings["bundler build"] = time.monotonic() - started
    dist = site / "dist"
    assert (dist / "wechat" / "app.json").is_file(), "the example wrote no WeChat project"
    return dist


@pytest.fixture(scope="module")
def variant(example: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example with what it leaves out: a preloadRule, a remote model, several shards."""
    site = tmp_path_factory.mktemp("variant") / "site"
    # The example's .bundler-cache comes along: only the re-sharded model is converted again.
    shutil.copytree(example.parent, site, ignore=shutil.ignore_patterns("dist"))
    manifest = site / "bundle.toml"
    text = manifest.read_text(encoding="utf-8")
    for old, new in VARIANT_EDITS:
        assert old in text, f"the example's bundle.toml no longer has {old!r}"
        text = text.replace(old, old + new, 1)
    manifest.write_text(text, encoding="utf-8")
    started = time.monotonic()
    _run(
        [sys.executable, "-c", _BUNDLER, "build", str(manifest)],
        cwd=site,
        timeout=600,
        what="bundler build (variant)",
    )
    timings["bundler build (variant)"] = time.monotonic() - started
    dist = site / "dist"
    app = json.loads((dist / "wechat" / "app.json").read_text(encoding="utf-8"))
    assert app.get("preloadRule"), "the variant was meant to have a preloadRule"
    assert list(dist.glob("remote/*/*/model.json")), "the variant was meant to have a remote model"
    return dist


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where wechat_ci.js makes the throwaway private key (nothing is signed or sent)."""
    return tmp_path_factory.mktemp("ci-key") / "private.key"


# --- 1. the compile keeps every generated file -------------------------------------------------


def test_compiles_offline_and_keeps_every_generated_file(
    example: Path, node_tools: Path, key: Path
) -> None:
    project = example / "wechat"
    generated = _files(project)
    compiled = _ci("compile", project, key, out=example / "compiled.json")
    timings["compile"] = compiled["ms"] / 1000

    _print_messages("compile", compiled)
    missing = _missing(project, generated, compiled)
    assert not missing, (
        f"{len(missing)} generated file(s) missing from miniprogram-ci's compiled result "
        f"(upload would drop them): {missing}\nits messages: {_warnings(compiled)}"
    )
    _assert_offline(compiled)


def test_variant_compiles_offline_and_keeps_every_generated_file(
    variant: Path, node_tools: Path, key: Path
) -> None:
    project = variant / "wechat"
    compiled = _ci("compile", project, key, out=variant / "compiled.json")
    _print_messages("compile (variant)", compiled)
    missing = _missing(project, _files(project), compiled)
    assert not missing, (
        f"{len(missing)} generated file(s) missing from miniprogram-ci's compiled result "
        f"(upload would drop them): {missing}\nits messages: {_warnings(compiled)}"
    )
    _assert_offline(compiled)


def test_the_check_sees_a_file_that_upload_drops(
    example: Path, node_tools: Path, key: Path, tmp_path: Path
) -> None:
    """A control: a raw `.bin` shard beside the `.br` one is dropped, silently, and caught."""
    project = tmp_path / "wechat"
    shutil.copytree(example / "wechat", project)
    shard = next(project.glob("models-*/**/*.bin.br"))
    planted = shard.with_suffix("")  # group1-shard1of1.bin
    planted.write_bytes(b"\0" * 64)
    compiled = _ci("compile", project, key, out=tmp_path / "compiled.json")
    assert _missing(project, _files(project), compiled) == [planted.relative_to(project).as_posix()]


# --- 2. as generated, every package within 2 MB ----------------------------------------------


def test_every_package_within_2mb_with_no_npm_step(
    example: Path, node_tools: Path, key: Path
) -> None:
    project = example / "wechat"
    assert not list(project.rglob("package.json")), "the project must need no npm step"
    assert "packNpmRelationList" not in _project_config(project).get("setting", {})
    compiled = _ci("compile", project, key, out=example / "compiled-sizes.json")
    sizes = _package_sizes(project, compiled["files"])
    report = json.loads((example / "bundle-report.json").read_text(encoding="utf-8"))
    predicted = {p["root"]: p["bytes"] for p in report["packages"]}
    print("\npackage                   compiled   predicted      limit")
    for root, size in sizes.items():
        print(f"{root:22} {size:>11,} {predicted.get(root, 0):>11,} {PACKAGE_LIMIT:>10,}")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))

    assert set(sizes) == set(predicted), (sorted(sizes), sorted(predicted))
    over = {root: size for root, size in sizes.items() if size > PACKAGE_LIMIT}
    assert not over, f"packages over {PACKAGE_LIMIT:,} bytes as compiled: {over}"
    # The runtime is counted at its real bytes: the compiler changes it by a few percent at most.
    runtime = RUNTIME_ROOT
    assert abs(sizes[runtime] - predicted[runtime]) <= 0.05 * predicted[runtime], (
        sizes[runtime],
        predicted[runtime],
    )
    _assert_offline(compiled)


# --- 3. the glue type-checks --------------------------------------------------------------------


def test_glue_typechecks_against_the_wechat_typings(
    example: Path, node_tools: Path, tmp_path: Path
) -> None:
    project = example / "wechat"
    # The main package's scripts: bundler/loader.js, bundler/models.js, the pages, app.js.
    # tfjs/index.js is the minified tfjs runtime.
    files = sorted(
        p
        for p in project.rglob("*.js")
        if p.relative_to(project).parts[0] != RUNTIME_ROOT
        and not p.relative_to(project).parts[0].startswith("models-")
    )
    assert project / "bundler" / "loader.js" in files and project / "bundler" / "models.js" in files
    config = tmp_path / "tsconfig.json"
    config.write_text(
        json.dumps(
            {"extends": str(NODE_DIR / "tsconfig.json"), "files": [str(p) for p in files]},
            indent=1,
        ),
        encoding="utf-8",
    )
    started = time.monotonic()
    proc = subprocess.run(
        ["node", str(TSC), "-p", str(config), "--pretty", "false"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    timings["tsc"] = time.monotonic() - started
    checked = ", ".join(p.relative_to(project).as_posix() for p in files)
    assert proc.returncode == 0, (
        f"tsc --checkJs found type errors in {checked}:\n{proc.stdout}{proc.stderr}"
    )


# --- helpers ------------------------------------------------------------------------------------

_BUNDLER = "import sys; from bundler.cli import main; sys.exit(main(sys.argv[1:]))"


def _run(cmd: list[str], *, cwd: Path, timeout: int, what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc


def _ci(command: str, project: Path, *args: Path, out: Path) -> dict[str, Any]:
    """Run tests/node/wechat_ci.js; its result, or the test fails with its output."""
    env = {k: v for k, v in os.environ.items() if k != "NODE_OPTIONS"}
    proc = subprocess.run(
        ["node", str(CI_SCRIPT), command, str(project), *map(str, args), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert out.is_file(), f"miniprogram-ci {command} wrote no result ({proc.returncode}):\n{tail}"
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert proc.returncode == 0 and not result.get("error"), (
        f"miniprogram-ci {command} failed ({proc.returncode}): {result.get('error')}\n{tail}"
    )
    return result


def _files(project: Path) -> list[str]:
    return sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())


def _project_config(project: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((project / "project.config.json").read_text("utf-8"))
    return data


def _missing(project: Path, generated: list[str], compiled: dict[str, Any]) -> list[str]:
    """Generated files with no counterpart in the compiled result.

    .js/.json/.wxml/.wxss keep their names when compiled (es6 → es5, minified); other kept
    types (.br) are copied as they are; @babel/runtime helpers are added. So a source file's
    compiled counterpart has its name.
    """
    names = set(compiled["files"])
    return [f for f in generated if f not in names]


def _subpackage_roots(project: Path) -> list[str]:
    app = json.loads((project / "app.json").read_text(encoding="utf-8"))
    subs = app.get("subPackages", app.get("subpackages", []))
    return [s["root"].strip("/") for s in subs]


def _package_sizes(project: Path, files: dict[str, int]) -> dict[str, int]:
    """Compiled bytes per package root; the main package is everything outside every root."""
    roots = _subpackage_roots(project)
    sizes = {MAIN: 0, **dict.fromkeys(roots, 0)}
    for name, size in files.items():
        root = next((r for r in roots if name.startswith(r + "/")), MAIN)
        sizes[root] += size
    return sizes


def _warnings(compiled: dict[str, Any]) -> list[str]:
    return [m["message"] for m in compiled["messages"] if m["status"] == "warn"]


def _print_messages(what: str, compiled: dict[str, Any]) -> None:
    print(f"\n{what}: {len(compiled['files'])} files in {compiled['ms'] / 1000:.1f} s")
    for m in compiled["messages"]:
        if m["status"] == "warn" or m["message"].startswith("ignoring files"):
            print(f"  {m['status']}: {m['message']}")
    for attempt in compiled["network"]:
        print(f"  refused: {attempt['kind']} {attempt['target']}")


def _assert_offline(compiled: dict[str, Any]) -> None:
    unexpected = [
        a for a in compiled["network"] if not any(ok in a["target"] for ok in ALLOWED_REQUESTS)
    ]
    assert not unexpected, f"miniprogram-ci tried the network beyond the known call: {unexpected}"
