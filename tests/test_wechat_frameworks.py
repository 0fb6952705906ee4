"""The recipes for apps a framework compiles to a mini-program, built with the real framework.

Each app (tests/frameworks/<framework>/, installed with `npm ci` from its lockfile on first
use) gets the bundle from the bundler: uni-app (Vue 3 + Vite) wechat-bundle/ with a Vite plugin,
Taro (React, webpack 5) model-bundler/ with a Taro plugin. The framework's own CLI builds the
app for WeChat; miniprogram-ci compiles the output; the wx simulator loads a model through the
glue in it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import needs_node
from test_wechat_glue import Project, _mlp, assert_loaded, run
from test_wechat_tencent import NPM_FLAGS, _ci, _files, _missing, node_tools  # noqa: F401

from bundler import build, manifest
from bundler.errors import ManifestError
from bundler.targets.wechat.merge import ProjectError

pytestmark = [pytest.mark.slow, needs_node]

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ROOT / "tests" / "frameworks"
UNIAPP = FRAMEWORKS / "uniapp"
UNIAPP_OUTPUT = Path("dist/build/mp-weixin")
TARO = FRAMEWORKS / "taro"
TARO_OUTPUT = Path("dist")
APPID = "wx0123456789abcdef"


def installed(app: Path) -> Path:
    """app/node_modules from its lockfile, installed again when the lockfile changes."""
    stamp = app / "node_modules" / ".installed"
    lock = app / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        proc = subprocess.run(
            ["npm", "ci", *NPM_FLAGS],
            cwd=app,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, f"npm ci in {app} failed:\n{proc.stderr[-3000:]}"
        stamp.touch()
    return app / "node_modules"


@pytest.fixture(scope="module")
def uniapp_modules() -> Path:
    return installed(UNIAPP)


@pytest.fixture(scope="module")
def taro_modules() -> Path:
    return installed(TARO)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import tf_keras

    return _mlp(tf_keras, [16], 1, tmp_path_factory.mktemp("uniapp-model") / "small.h5")


def site_for(framework: str, tmp: Path, source: Any, modules: Path) -> Path:
    """The recipe's app copied to tmp/app (node_modules linked) and a manifest for it."""
    app = tmp / "app"
    ignore = shutil.ignore_patterns("node_modules", "dist", "wechat-bundle", "model-bundler")
    shutil.copytree(FRAMEWORKS / framework, app, ignore=ignore)
    (app / "node_modules").symlink_to(modules, target_is_directory=True)
    site = tmp / "bundle.toml"
    site.write_text(
        "\n".join(
            [
                "[project]",
                'name = "uniapp-models"',
                'targets = ["wechat"]',
                'cache_dir = "cache"',
                "",
                "[wechat]",
                f'appid = "{APPID}"',
                'project = "app"',
                f'framework = "{framework}"',
                "",
                "[[models]]",
                'name = "small"',
                f'source = "{source.h5}"',
                # The Taro page calls model.predict (a LayersModel), the uni-app page execute.
                f'format = "{"layers" if framework == "taro" else "graph"}"',
                'preload = ["pages/index/index"]',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return site


def framework_build(app: Path, cli: str, args: list[str], output: Path) -> Path:
    """The framework's CLI building the app for WeChat; its output folder, checked to hold an
    app.json (a failed config check can exit 0 without building)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNI_")}
    proc = subprocess.run(
        [str(app / "node_modules" / ".bin" / cli), *args],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    out = app / output
    assert proc.returncode == 0 and (out / "app.json").is_file(), (
        f"{cli} {' '.join(args)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}"
    )
    return out


def compiles_and_predicts(out: Path, source: Any, tmp: Path, dropped: str = "\0") -> None:
    """miniprogram-ci compiles the output, keeping every file (but names ending in `dropped`),
    and the wx simulator loads the model through the glue there."""
    compiled = _ci("compile", out, tmp / "private.key", out=tmp / "compiled.json")
    missing = [f for f in _missing(out, _files(out), compiled) if not f.endswith(dropped)]
    assert not missing, missing
    js = (out / "bundler/models.js").read_text(encoding="utf-8")
    entries = json.loads(js[js.index("{") : js.rindex("}") + 1])
    remote = tmp / "no-remote"
    remote.mkdir()
    view = Project(out, remote, entries, {"small": source.expected})
    [load] = run(view, tmp / "run", [{"op": "load", "models": ["small"]}], Path())
    assert_loaded(load, view)


PAGE_RUNNER = ROOT / "tests" / "wx" / "framework_page.cjs"
_FLOAT = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")


def page_predicts(kind: str, out: Path, source: Any, tmp: Path) -> None:
    """The framework's own page, run in the wx simulator, shows what Keras predicts for the
    page's fixed input (i / 63 for i < 64), then releases the model on onUnload."""
    import tf_keras

    result_file = tmp / f"{kind}-page.json"
    proc = subprocess.run(
        ["node", str(PAGE_RUNNER), kind, str(out), str(tmp / "page-usr"), str(result_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and result_file.is_file(), proc.stderr[-3000:]
    result = json.loads(result_file.read_text(encoding="utf-8"))
    assert not result.get("error"), result["error"]
    assert result["status"] == "ready", result
    assert not result["console_error"], result["console_error"]
    assert result["plugin_configs"] == 1
    assert result["tensors_after_unload"] == 0, result
    model = tf_keras.models.load_model(source.h5, compile=False)
    want = model(np.arange(64, dtype=np.float32)[None] / 63).numpy()[0]
    shown = [float(v) for v in _FLOAT.findall(result["data"])]
    for value in want:  # each output, as the page shows it (Taro rounds to 4 digits)
        assert any(abs(v - value) <= 1e-4 for v in shown), (value, shown[:20])


def test_uniapp_builds_with_the_bundle_merged(
    tmp_path: Path,
    source: Any,
    uniapp_modules: Path,
    node_tools: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    site = site_for("uniapp", tmp_path, source, uniapp_modules)
    app = site.parent / "app"
    before = {p: (app / "src" / p).read_bytes() for p in ("pages.json", "manifest.json")}
    build.build(manifest.load(site), progress=lambda _: None)
    bundle = app / "wechat-bundle"
    assert sorted(p.name for p in bundle.iterdir()) == [
        ".bundler-owned.json",
        "bundler",
        "fragment.json",
        "models-small-1",
        "tfjs",
        "vite-plugin.mjs",
    ]
    # The app's own sources stay as they were: the plugin merges at build time.
    assert {p: (app / "src" / p).read_bytes() for p in before} == before

    out = framework_build(app, "uni", ["build", "-p", "mp-weixin"], UNIAPP_OUTPUT)
    page_predicts("uniapp", out, source, tmp_path)
    built = json.loads((out / "app.json").read_text(encoding="utf-8"))
    assert built["pages"] == ["pages/index/index"]
    assert [s["root"] for s in built["subPackages"]] == ["sub", "tfjs", "models-small-1"]
    assert built["plugins"]["tfjsPlugin"] == {"version": "0.2.0", "provider": "wx6afed118d9e81df9"}
    assert built["preloadRule"]["pages/index/index"]["packages"] == ["tfjs", "models-small-1"]
    config = json.loads((out / "project.config.json").read_text(encoding="utf-8"))
    assert config["setting"]["babelSetting"]["ignore"] == ["tfjs/index.js"]
    assert config["packOptions"]["include"] == [{"type": "folder", "value": "models-small-1"}]
    for rel in ("tfjs/index.js", "bundler/loader.js", "bundler/models.js"):
        assert (out / rel).read_bytes() == (bundle / rel).read_bytes(), rel

    compiles_and_predicts(out, source, tmp_path)


def test_taro_builds_with_the_bundle_merged(
    tmp_path: Path,
    source: Any,
    taro_modules: Path,
    node_tools: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    site = site_for("taro", tmp_path, source, taro_modules)
    app = site.parent / "app"
    build.build(manifest.load(site), progress=lambda _: None)
    bundle = app / "model-bundler"
    assert sorted(p.name for p in bundle.iterdir()) == [
        ".bundler-owned.json",
        "fragment.json",
        "index.d.ts",
        "index.js",
        "taro-plugin.js",
        "wechat",
    ]
    assert sorted(p.name for p in (bundle / "wechat").iterdir()) == [
        "bundler",
        "models-small-1",
        "tfjs",
    ]

    out = framework_build(app, "taro", ["build", "--type", "weapp"], TARO_OUTPUT)
    page_predicts("taro", out, source, tmp_path)
    built = json.loads((out / "app.json").read_text(encoding="utf-8"))
    assert built["pages"] == ["pages/index/index"]
    assert [s["root"] for s in built["subPackages"]] == ["tfjs", "models-small-1"]
    assert built["plugins"]["tfjsPlugin"] == {"version": "0.2.0", "provider": "wx6afed118d9e81df9"}
    assert built["preloadRule"]["pages/index/index"]["packages"] == ["tfjs", "models-small-1"]
    config = json.loads((out / "project.config.json").read_text(encoding="utf-8"))
    assert config["setting"]["babelSetting"]["ignore"] == ["tfjs/index.js"]
    # Copied as they are: Taro's minifiers leave them alone.
    for rel in ("tfjs/index.js", "bundler/loader.js", "bundler/models.js"):
        assert (out / rel).read_bytes() == (bundle / "wechat" / rel).read_bytes(), rel
    # The glue module sits in the root chunk, where its relative require resolves.
    assert 'require("./bundler/loader.js")' in (out / "common.js").read_text(encoding="utf-8")

    # Taro's own *.LICENSE.txt files are the only ones upload drops.
    compiles_and_predicts(out, source, tmp_path, dropped=".LICENSE.txt")


def test_a_folder_that_is_no_uniapp_is_an_error(tmp_path: Path, source: Any) -> None:
    site = tmp_path / "bundle.toml"
    (tmp_path / "app").mkdir()
    site.write_text(
        f'[project]\nname = "x"\ntargets = ["wechat"]\n\n[wechat]\nappid = "{APPID}"\n'
        f'project = "app"\nframework = "uniapp"\n\n[[models]]\nname = "small"\n'
        f'source = "{source.h5}"\n'
    )
    with pytest.raises(ProjectError) as caught:
        build.build(manifest.load(site), progress=lambda _: None)
    assert str(caught.value) == (
        f"{tmp_path / 'app'}: no src/pages.json there, so it is not a uni-app project; set "
        '[wechat] project to the folder of its package.json, or framework = "native" for a '
        "WeChat DevTools project"
    )


def test_framework_needs_a_project(tmp_path: Path) -> None:
    site = tmp_path / "bundle.toml"
    site.write_text('[project]\nname = "x"\n\n[wechat]\nframework = "uniapp"\n')
    with pytest.raises(ManifestError) as caught:
        manifest.load(site)
    assert caught.value.problems[0] == (
        "wechat.framework: applies with [wechat] project only: set project to the app's folder"
    )
