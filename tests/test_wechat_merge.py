"""Models merged into an existing native mini-program (`[wechat] project`): theirs untouched,
ours added, replaced and removed by the record in bundler/owned.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_node
from test_watch import Running
from test_wechat_glue import Project, _mlp, assert_loaded, run
from test_wechat_tencent import _ci, _files, _missing, node_tools  # noqa: F401 (a fixture)

from bundler import build, manifest
from bundler.errors import ManifestError, PlanError
from bundler.targets.wechat.merge import ProjectError

pytestmark = needs_node

APPID = "wx0123456789abcdef"
THEIR_APP = {
    "pages": ["pages/home/index", "pages/cart/index"],
    "window": {"navigationBarTitleText": "Shop", "navigationBarBackgroundColor": "#ffffff"},
    "tabBar": {
        "list": [
            {"pagePath": "pages/home/index", "text": "首页"},
            {"pagePath": "pages/cart/index", "text": "购物车"},
        ]
    },
    "subPackages": [{"root": "packageA", "pages": ["pages/detail/index"]}],
    "preloadRule": {"pages/cart/index": {"network": "wifi", "packages": ["packageA"]}},
    "plugins": {"myPlugin": {"version": "1.2.0", "provider": "wx1111111111111111"}},
    "lazyCodeLoading": "requiredComponents",
    "sitemapLocation": "sitemap.json",
}
THEIR_CONFIG = {
    "miniprogramRoot": "miniprogram/",
    "appid": APPID,
    "projectname": "shop",
    "compileType": "miniprogram",
    "libVersion": "2.30.4",
    "setting": {"es6": True, "enhance": True, "minified": True, "urlCheck": True},
    "packOptions": {"ignore": [{"type": "file", "value": ".eslintrc.js"}], "include": []},
    "condition": {},
    "editorSetting": {"tabIndent": "insertSpaces", "tabSize": 2},
}
PAGE_JS = "Page({data: {}});\n"


def native_project(folder: Path) -> Path:
    """A project as DevTools makes one: miniprogramRoot, a tabBar, a subpackage, a plugin."""
    root = folder / "miniprogram"
    files = {
        "project.config.json": json.dumps(THEIR_CONFIG, indent=2, ensure_ascii=False) + "\n",
        ".eslintrc.js": "module.exports = {};\n",
        "miniprogram/app.json": json.dumps(THEIR_APP, indent=2, ensure_ascii=False) + "\n",
        "miniprogram/app.js": "App({globalData: {}});\n",
        "miniprogram/app.wxss": "page { color: #333; }\n",
        "miniprogram/sitemap.json": '{"rules": [{"action": "allow", "page": "*"}]}\n',
        "miniprogram/utils/util.js": "module.exports = {add: (a, b) => a + b};\n",
    }
    for page in ("pages/home/index", "pages/cart/index", "packageA/pages/detail/index"):
        files[f"miniprogram/{page}.js"] = PAGE_JS
        files[f"miniprogram/{page}.json"] = "{}\n"
        files[f"miniprogram/{page}.wxml"] = "<view>{{page}}</view>\n".replace("{{page}}", page)
        files[f"miniprogram/{page}.wxss"] = ""
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert root.is_dir()
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def mtimes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import tf_keras

    folder = tmp_path_factory.mktemp("merge-sources")
    return {
        "small": _mlp(tf_keras, [16], 1, folder / "small.h5"),
        "wide": _mlp(tf_keras, [32, 16], 2, folder / "wide.h5"),
    }


def write_site(folder: Path, sources: dict[str, Any], names: tuple[str, ...], **extra: str) -> Path:
    """A manifest beside a fresh native project `shop/`; returns the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "shop").exists():
        native_project(folder / "shop")
    models = []
    for name in names:
        lines = [
            "[[models]]",
            f'name = "{name}"',
            f'source = "{sources[name].h5}"',
            'format = "layers"' if name == "wide" else 'format = "graph"',
        ]
        if name == "small":
            lines.append('preload = ["pages/home/index"]')
        models.append("\n".join(lines))
    wechat = [f'appid = "{APPID}"', 'project = "shop"', *extra.values()]
    text = "\n".join(
        [
            "[project]",
            'name = "shop-models"',
            'targets = ["wechat"]',
            'cache_dir = "../cache"',
            "",
            "[wechat]",
            *wechat,
            "",
            *models,
            "",
        ]
    )
    path = folder / "bundle.toml"
    path.write_text(text, encoding="utf-8")
    return path


def build_site(path: Path) -> build.Result:
    return build.build(manifest.load(path), progress=lambda _: None)


@pytest.fixture
def merged(tmp_path: Path, sources: dict[str, Any]) -> tuple[Path, dict[str, bytes], build.Result]:
    """The native project before, and the build that merged both models into it."""
    site = write_site(tmp_path / "site", sources, ("small", "wide"))
    project = site.parent / "shop"
    before = snapshot(project)
    result = build_site(site)
    return project, before, result


# --- the merge ---------------------------------------------------------------------------------


def test_their_files_stay_and_ours_are_added(
    merged: tuple[Path, dict[str, bytes], build.Result],
) -> None:
    project, before, result = merged
    after = snapshot(project)
    edited = {"project.config.json", "miniprogram/app.json"}
    for rel, data in before.items():
        if rel not in edited:
            assert after[rel] == data, rel
    added = sorted(set(after) - set(before))
    tops = {rel.split("/")[1] for rel in added}
    assert tops == {"tfjs", "bundler", "models-small-1", "models-wide-1"}, tops
    assert "miniprogram/tfjs/index.js" in added and "miniprogram/bundler/loader.js" in added
    assert "miniprogram/bundler/owned.json" in added
    # Nothing of the project is generated under out/: no demo pages, no app.js of ours.
    assert not (project.parent / "dist" / "wechat").exists()
    assert not any("/pages/small" in rel or "/pages/wide" in rel for rel in added)
    assert result.written


def test_app_json_keeps_every_key_and_value_of_theirs(
    merged: tuple[Path, dict[str, bytes], build.Result],
) -> None:
    project, _, _ = merged
    app = json.loads((project / "miniprogram/app.json").read_text(encoding="utf-8"))
    assert list(app) == list(THEIR_APP)  # their keys, in their order
    for key in ("pages", "window", "tabBar", "lazyCodeLoading", "sitemapLocation"):
        assert app[key] == THEIR_APP[key], key
    assert app["subPackages"][0] == THEIR_APP["subPackages"][0]
    assert [s["root"] for s in app["subPackages"][1:]] == [
        "tfjs",
        "models-small-1",
        "models-wide-1",
    ]
    assert app["plugins"] == {
        **THEIR_APP["plugins"],
        "tfjsPlugin": {"version": "0.2.0", "provider": "wx6afed118d9e81df9"},
    }
    assert app["preloadRule"] == {
        **THEIR_APP["preloadRule"],
        "pages/home/index": {"packages": ["tfjs", "models-small-1"], "network": "all"},
    }


def test_project_config_gains_only_what_upload_needs(
    merged: tuple[Path, dict[str, bytes], build.Result],
) -> None:
    project, _, _ = merged
    config = json.loads((project / "project.config.json").read_text(encoding="utf-8"))
    for key in THEIR_CONFIG:
        if key not in ("setting", "packOptions"):
            assert config[key] == THEIR_CONFIG[key], key
    assert {k: v for k, v in config["setting"].items() if k != "babelSetting"} == (
        THEIR_CONFIG["setting"]
    )
    assert config["setting"]["babelSetting"]["ignore"] == ["tfjs/index.js"]
    assert config["packOptions"]["ignore"] == THEIR_CONFIG["packOptions"]["ignore"]
    assert config["packOptions"]["include"] == [
        {"type": "folder", "value": "models-small-1"},
        {"type": "folder", "value": "models-wide-1"},
    ]


def test_a_rebuild_with_nothing_changed_changes_no_byte(
    merged: tuple[Path, dict[str, bytes], build.Result],
) -> None:
    project, _, _ = merged
    before, times = snapshot(project), mtimes(project)
    result = build_site(project.parent / "bundle.toml")
    assert not result.written
    assert snapshot(project) == before and mtimes(project) == times


def test_a_removed_model_leaves_no_trace(
    tmp_path: Path, sources: dict[str, Any], merged: tuple[Path, dict[str, bytes], build.Result]
) -> None:
    """Both models, then one: byte for byte what merging that one alone makes."""
    project, _, _ = merged
    build_site(write_site(project.parent, sources, ("small",)))
    alone = write_site(tmp_path / "alone", sources, ("small",))
    build_site(alone)
    assert snapshot(project) == snapshot(alone.parent / "shop")
    assert "wide" not in (project / "miniprogram/bundler/models.js").read_text()


def test_their_files_inside_our_folders_survive(
    sources: dict[str, Any], merged: tuple[Path, dict[str, bytes], build.Result]
) -> None:
    project, _, _ = merged
    mine = project / "miniprogram/bundler/notes.md"
    mine.write_text("my notes")
    build_site(write_site(project.parent, sources, ("small",)))  # a change: bundler/ swapped
    assert mine.read_text() == "my notes"
    record = json.loads((project / "miniprogram/bundler/owned.json").read_text())
    assert "notes.md" not in record["files"]["bundler"]


def test_demo_pages_when_asked_for_and_gone_when_not(
    sources: dict[str, Any], merged: tuple[Path, dict[str, bytes], build.Result]
) -> None:
    project, _, _ = merged
    site = project.parent / "bundle.toml"
    plain = snapshot(project)
    site.write_text(
        site.read_text().replace('project = "shop"', 'project = "shop"\ndemo_pages = true')
    )
    build_site(site)
    app = json.loads((project / "miniprogram/app.json").read_text(encoding="utf-8"))
    assert app["pages"] == [
        *THEIR_APP["pages"],
        "bundler/pages/small/index",
        "bundler/pages/wide/index",
    ]
    page = (project / "miniprogram/bundler/pages/small/index.js").read_text(encoding="utf-8")
    assert "require('../../loader.js')" in page
    site.write_text(site.read_text().replace("demo_pages = true", "demo_pages = false"))
    build_site(site)
    assert snapshot(project) == plain


def test_demo_pages_off_needs_a_project(tmp_path: Path) -> None:
    site = tmp_path / "bundle.toml"
    site.write_text('[project]\nname = "x"\n\n[wechat]\ndemo_pages = false\n')
    with pytest.raises(ManifestError) as caught:
        manifest.load(site)
    assert caught.value.problems[0] == (
        "wechat.demo_pages: applies with [wechat] project only; a generated project always has "
        "its demo pages (remove the key)"
    )


# --- what fails leaves the project as it was ---------------------------------------------------


def test_a_failed_build_changes_nothing(
    sources: dict[str, Any], merged: tuple[Path, dict[str, bytes], build.Result]
) -> None:
    project, _, _ = merged
    site = project.parent / "bundle.toml"
    before, times = snapshot(project), mtimes(project)
    text = site.read_text()
    site.write_text(text.replace('format = "layers"', 'format = "layers"\nquantize = "int4"'))
    with pytest.raises(ManifestError):
        build_site(site)
    # Late: the models converted and verified, and the plan cannot fit the main package.
    site.write_text(
        text.replace("[[models]]", "[wechat.limits]\nmain_package_bytes = 4096\n\n[[models]]", 1)
    )
    with pytest.raises(PlanError):
        build_site(site)
    assert snapshot(project) == before and mtimes(project) == times


def conflict(tmp_path: Path, sources: dict[str, Any], change: Any) -> tuple[str, Path]:
    site = write_site(tmp_path / "site", sources, ("small",))
    project = site.parent / "shop"
    change(project)
    before = snapshot(project)
    with pytest.raises(ProjectError) as caught:
        build_site(site)
    assert snapshot(project) == before
    assert not (site.parent / "dist").exists()
    return str(caught.value), project


def test_a_folder_of_theirs_named_like_ours_is_a_conflict(
    tmp_path: Path, sources: dict[str, Any]
) -> None:
    message, project = conflict(
        tmp_path, sources, lambda p: (p / "miniprogram/tfjs").mkdir() or None
    )
    assert message == (
        f"{project / 'miniprogram/tfjs'}: the bundle writes a folder of this name, and the "
        "project has one of its own; rename yours, or the model (its subpackages are "
        "models-<name>-<k>)"
    )


def test_a_tfjs_plugin_of_another_version_is_a_conflict(
    tmp_path: Path, sources: dict[str, Any]
) -> None:
    def other_plugin(project: Path) -> None:
        app = dict(THEIR_APP)
        app["plugins"] = {"tfjsPlugin": {"version": "0.1.0", "provider": "wx6afed118d9e81df9"}}
        (project / "miniprogram/app.json").write_text(json.dumps(app, indent=2))

    message, project = conflict(tmp_path, sources, other_plugin)
    assert message == (
        f"{project / 'miniprogram/app.json'}: plugins.tfjsPlugin is "
        '{"version": "0.1.0", "provider": "wx6afed118d9e81df9"}, and the bundle needs '
        '{"version": "0.2.0", "provider": "wx6afed118d9e81df9"}; set [wechat] plugin_version '
        "to the version the project uses, or remove the project's tfjsPlugin entry"
    )


def test_an_app_json_that_is_not_json_is_an_error(tmp_path: Path, sources: dict[str, Any]) -> None:
    message, project = conflict(
        tmp_path,
        sources,
        lambda p: (p / "miniprogram/app.json").write_text('{"pages": [,]}') and None,
    )
    assert message.startswith(f"{project / 'miniprogram/app.json'}: not valid JSON (")
    assert message.endswith("); WeChat DevTools would refuse it too: fix it and build again")


def test_a_folder_that_is_no_project_is_an_error(tmp_path: Path, sources: dict[str, Any]) -> None:
    message, project = conflict(tmp_path, sources, lambda p: (p / "project.config.json").unlink())
    assert message == (
        f"{project}: no project.config.json there, so it is not a WeChat mini-program project; "
        "set [wechat] project to the folder that holds it (or remove the key to generate a new "
        "project)"
    )


# --- bundler watch -------------------------------------------------------------------------


def test_watch_merges_every_save_into_the_project(
    tmp_path: Path, sources: dict[str, Any], merged: tuple[Path, dict[str, bytes], build.Result]
) -> None:
    """A save rebuilds into the project; what the merge writes there starts no other build."""
    project, before, _ = merged
    site = project.parent / "bundle.toml"
    templates = tmp_path / "templates"
    templates.mkdir()
    running = Running(site, templates)
    try:
        first = running.built()
        assert not first.result.written  # merged already: nothing to do
        text = site.read_text()
        site.write_text(text.replace('format = "graph"', 'format = "graph"\nquantize = "float16"'))
        rebuilt = running.built()
        assert rebuilt.result.converted == ["small"] and rebuilt.result.written
        running.assert_quiet()
    finally:
        running.close()
    after = snapshot(project)
    shard = next(
        k for k in after if k.startswith("miniprogram/models-small-1/") and "model.json" in k
    )
    assert '"float16"' in after[shard].decode()
    for rel, data in before.items():
        if rel not in ("project.config.json", "miniprogram/app.json"):
            assert after[rel] == data, rel


# --- the merged project works ------------------------------------------------------------------


@pytest.mark.slow
def test_a_model_predicts_through_the_merged_glue(
    tmp_path: Path, sources: dict[str, Any], merged: tuple[Path, dict[str, bytes], build.Result]
) -> None:
    """In the wx simulator, from the merged project's own root: both models, from packages."""
    project, _, _ = merged
    root = project / "miniprogram"
    js = (root / "bundler/models.js").read_text(encoding="utf-8")
    entries = json.loads(js[js.index("{") : js.rindex("}") + 1])
    remote = tmp_path / "no-remote"
    remote.mkdir()
    view = Project(
        wechat=root,
        remote=remote,
        entries=entries,
        expected={name: sources[name].expected for name in entries},
    )
    [load] = run(view, tmp_path / "run", [{"op": "load", "models": ["small", "wide"]}], Path())
    assert_loaded(load, view)
    assert load["requests"] == 0


@pytest.mark.slow
def test_miniprogram_ci_compiles_the_merged_project(
    tmp_path: Path,
    node_tools: Path,  # noqa: F811 (the fixture imported above)
    merged: tuple[Path, dict[str, bytes], build.Result],
) -> None:
    """Tencent's compiler, from the folder of project.config.json: every file comes out."""
    project, _, _ = merged
    compiled = _ci("compile", project, tmp_path / "private.key", out=tmp_path / "compiled.json")
    root = project / "miniprogram"
    missing = _missing(root, _files(root), compiled)
    assert not missing, missing
