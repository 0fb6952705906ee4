"""Merge the WeChat target into an existing mini-program project (`[wechat] project`).

The build owns three kinds of folder at the mini-program root: the runtime subpackage
(`tfjs/`), the model subpackages (`models-<name>-<k>/`) and the glue (`bundler/`); and a few
entries of `app.json` (its `subPackages`, its `preloadRule` packages, `plugins.tfjsPlugin` when it
added it) and of `project.config.json` (`packOptions.include`, `setting.babelSetting.ignore`).
`bundler/owned.json` records all of it. A rebuild takes out what the record lists and puts in
what this build makes, so every key, value, page, subpackage and file of theirs stays as it was;
a model removed from the manifest leaves nothing behind.

Planning (`plan_merge`) only reads, and raises `ProjectError` on any conflict before anything is
written. Applying (`apply`) stages every owned folder beside it first (their own files inside
one carried over by hard link), swaps each in by rename, and writes app.json and
project.config.json last, each atomically; a file whose bytes are unchanged is not written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bundler import emit
from bundler.errors import BundlerError

PROJECT_CONFIG = "project.config.json"
PROJECT_FILES = (PROJECT_CONFIG, "project.private.config.json")  # DevTools', never uploaded code
APP_JSON = "app.json"
RECORD = "bundler/owned.json"  # in the glue folder, relative to the mini-program root
RECORD_FORMAT = 1


class ProjectWrite(Protocol):
    """A write into the user's project, planned and checked while rendering."""

    def apply(self) -> bool:
        """Write it; False when nothing changed."""
        ...


class ProjectError(BundlerError):
    """The existing project cannot take the bundle: not a project, invalid JSON, a conflict."""


@dataclass(frozen=True)
class Fragment:
    """What the build adds to app.json and project.config.json."""

    subpackages: tuple[dict[str, Any], ...]
    preload: Mapping[str, tuple[str, ...]]  # page → our subpackage roots it preloads
    plugin: Mapping[str, str]  # tfjsPlugin's {version, provider}
    include: tuple[str, ...]  # folders for packOptions.include
    babel_ignore: tuple[str, ...]  # files for setting.babelSetting.ignore
    pages: tuple[str, ...] = ()  # demo pages, appended to the main package's pages


@dataclass(frozen=True)
class Merge:
    """What a build writes into an existing project; see `apply`."""

    root: Path  # the mini-program root
    folders: Mapping[str, Mapping[str, bytes]]  # owned top folder → its files, relative to it
    previous: Mapping[str, tuple[str, ...]]  # top folder → the files it owned before
    app_json: bytes | None  # None: unchanged
    project_config: bytes | None
    project_config_path: Path
    app_json_bytes: int = 0  # the merged app.json's size, for the main package

    def apply(self) -> bool:
        """Write it (a ProjectWrite); False when the project already held exactly it."""
        return apply(self)


def mini_program_root(project: Path) -> Path:
    """The mini-program root of the project at `project` (its `miniprogramRoot`)."""
    if not (project / PROJECT_CONFIG).is_file():
        raise ProjectError(
            f"{project}: no {PROJECT_CONFIG} there, so it is not a WeChat mini-program project; "
            "set [wechat] project to the folder that holds it (or remove the key to generate "
            "a new project)"
        )
    config = _parse(_read_text(project / PROJECT_CONFIG), project / PROJECT_CONFIG)
    value = config.get("miniprogramRoot") or ""
    if not isinstance(value, str):
        raise ProjectError(f"{project / PROJECT_CONFIG}: miniprogramRoot is not a folder name")
    root = (project / value).resolve()
    if not root.is_relative_to(project.resolve()) or not (root / APP_JSON).is_file():
        raise ProjectError(
            f"{project / PROJECT_CONFIG}: miniprogramRoot {value!r} holds no app.json; "
            "point [wechat] project at the folder of the mini-program's project.config.json"
        )
    return root


def read_app(root: Path) -> dict[str, Any]:
    """The mini-program's app.json, parsed; ProjectError when it is not valid JSON."""
    path = root / APP_JSON
    return _parse(_read_text(path), path)


def owned_folders(root: Path) -> set[str]:
    """The folders the last build wrote at the mini-program root."""
    return {f for f in _read_record(root).get("folders", []) if isinstance(f, str)}


def plan_merge(project: Path, files: Mapping[str, bytes], fragment: Fragment) -> Merge:
    """How to merge `files` (relative to the mini-program root) and `fragment` into `project`.

    Reads only; raises ProjectError on a conflict, with nothing written.
    """
    root = mini_program_root(project)
    record = _read_record(root)
    record["folders"] = [f for f in record.get("folders", []) if isinstance(f, str)]
    mine_before = set(record["folders"])

    folders: dict[str, dict[str, bytes]] = {}
    for rel, data in files.items():
        top, _, rest = rel.partition("/")
        folders.setdefault(top, {})[rest] = data
    folders.setdefault("bundler", {})
    for top in folders:
        path = root / top
        if top not in mine_before and (path.exists() or path.is_symlink()):
            raise ProjectError(
                f"{path}: the bundle writes a folder of this name, and the project has one "
                "of its own; rename yours, or the model (its subpackages are models-<name>-<k>)"
            )

    app_path = root / APP_JSON
    app_text = _read_text(app_path)
    app = _parse(app_text, app_path)
    merged_app = _merge_app(app, record.get("app_json", {}), fragment, app_path)
    config_path = project / PROJECT_CONFIG
    config_text = _read_text(config_path)
    config = _parse(config_text, config_path)
    merged_config = _merge_config(config, record.get("project_config", {}), fragment)

    new_record = {
        "generator": "model bundler",
        "format": RECORD_FORMAT,
        "note": "What the bundler owns in this mini-program; a rebuild replaces only this.",
        "folders": sorted(folders),
        "files": {
            top: sorted({*fs, *(["owned.json"] if top == "bundler" else [])})
            for top, fs in sorted(folders.items())
        },
        "app_json": merged_app[1],
        "project_config": merged_config[1],
    }
    folders["bundler"]["owned.json"] = (json.dumps(new_record, indent=1) + "\n").encode()
    previous = {
        top: tuple(p for p in record.get("files", {}).get(top, []) if isinstance(p, str))
        for top in mine_before
    }
    app_bytes = _dump(merged_app[0], app_text)
    config_bytes = _dump(merged_config[0], config_text)
    return Merge(
        root=root,
        folders=folders,
        previous=previous,
        app_json=None if app_bytes == app_text.encode() else app_bytes,
        project_config=None if config_bytes == config_text.encode() else config_bytes,
        project_config_path=config_path,
        app_json_bytes=len(app_bytes),
    )


def apply(m: Merge) -> bool:
    """Write the merge; False when the project already held exactly it."""
    staged: list[tuple[Path, Path]] = []  # (staged tree, owned folder)
    try:
        for top, files in sorted(m.folders.items()):
            target = m.root / top
            if _holds(target, files, m.previous.get(top)):
                continue
            staged.append((emit.stage(target, files, set(m.previous.get(top, ()))), target))
        stale = [top for top in m.previous if top not in m.folders]
        if not staged and not stale and m.app_json is None and m.project_config is None:
            return False
        for tree, target in staged:
            emit.swap_in(tree, target)
        for top in stale:
            _remove_owned(m.root / top, m.previous[top])
        if m.app_json is not None:
            emit.write_file(m.root / APP_JSON, m.app_json)
        if m.project_config is not None:
            emit.write_file(m.project_config_path, m.project_config)
    finally:
        for tree, _ in staged:
            shutil.rmtree(tree, ignore_errors=True)
    return True


# --- app.json and project.config.json ---------------------------------------------------------


def _merge_app(
    app: dict[str, Any], before: Mapping[str, Any], fragment: Fragment, path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Their app.json less what the last build added, plus what this one adds; the record."""
    ours_before = set(before.get("subPackages", []))
    key = "subPackages" if "subPackages" in app or "subpackages" not in app else "subpackages"
    theirs = [s for s in app.get(key, []) if not _owned_sub(s, ours_before)]
    roots = {str(s.get("root", "")).strip("/") for s in theirs if isinstance(s, dict)}
    for sub in fragment.subpackages:
        if sub["root"] in roots:
            raise ProjectError(
                f'{path}: subPackages already has a root "{sub["root"]}"; the bundle needs it '
                "for its own subpackage: rename yours"
            )
    pages_before = set(before.get("pages", []))
    pages = [p for p in app.get("pages", []) if isinstance(p, str) and p not in pages_before]
    for page in fragment.pages:
        if page in pages:
            raise ProjectError(f'{path}: pages already has "{page}", a demo page of the bundle')
    app = dict(app)
    if "pages" in app or fragment.pages:
        app["pages"] = pages + list(fragment.pages)
    app[key] = theirs + [dict(s) for s in fragment.subpackages]

    preload = {page: dict(rule) for page, rule in (app.get("preloadRule") or {}).items()}
    added_pages = set(before.get("preloadPages", []))
    for page, rule in list(preload.items()):
        kept = [r for r in rule.get("packages", []) if r not in ours_before]
        if page in added_pages and not kept:
            del preload[page]
        else:
            preload[page] = {**rule, "packages": kept}
    new_pages = []
    for page, roots_ in fragment.preload.items():
        if page not in pages:
            raise ProjectError(
                f'{path}: a model preloads on page "{page}", which is not in its pages; '
                "preload lists pages of the main package"
            )
        if page not in preload:
            preload[page] = {"packages": [], "network": "all"}
            new_pages.append(page)
        preload[page]["packages"] = [*preload[page].get("packages", []), *roots_]
    if preload:
        app["preloadRule"] = preload
    else:
        app.pop("preloadRule", None)

    plugins = dict(app.get("plugins") or {})
    added_plugin = bool(before.get("plugin"))
    if added_plugin:
        plugins.pop("tfjsPlugin", None)
    current = plugins.get("tfjsPlugin")
    if current is None:
        plugins["tfjsPlugin"] = dict(fragment.plugin)
        added_plugin = True
    elif not isinstance(current, dict) or any(
        current.get(k) != v for k, v in fragment.plugin.items()
    ):
        raise ProjectError(
            f"{path}: plugins.tfjsPlugin is {json.dumps(current, ensure_ascii=False)}, and the "
            f"bundle needs {json.dumps(dict(fragment.plugin))}; set [wechat] plugin_version to "
            "the version the project uses, or remove the project's tfjsPlugin entry"
        )
    else:
        added_plugin = False
    app["plugins"] = plugins
    record = {
        "pages": list(fragment.pages),
        "subPackages": [s["root"] for s in fragment.subpackages],
        "preloadPages": sorted({*(p for p in added_pages if p in preload), *new_pages}),
        "plugin": added_plugin,
    }
    return app, record


def _owned_entry(entry: Any, ours: set[str]) -> bool:
    return isinstance(entry, dict) and entry.get("type") == "folder" and entry.get("value") in ours


def _owned_sub(sub: Any, ours: set[str]) -> bool:
    return isinstance(sub, dict) and str(sub.get("root", "")).strip("/") in ours


def _merge_config(
    config: dict[str, Any], before: Mapping[str, Any], fragment: Fragment
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Their project.config.json less what the last build added, plus what this one adds."""
    config = dict(config)
    include_before = set(before.get("include", []))
    ignore_before = set(before.get("babelIgnore", []))
    pack = dict(config.get("packOptions") or {})
    include = [
        e
        for e in pack.get("include", [])
        if not (
            isinstance(e, dict) and e.get("type") == "folder" and e.get("value") in include_before
        )
    ]
    present = {e.get("value") for e in include if isinstance(e, dict)}
    added_include = [v for v in fragment.include if v not in present]
    pack["include"] = include + [{"type": "folder", "value": v} for v in added_include]
    pack.setdefault("ignore", [])
    config["packOptions"] = pack

    setting = dict(config.get("setting") or {})
    babel = dict(setting.get("babelSetting") or {})
    ignore = [p for p in babel.get("ignore", []) if p not in ignore_before]
    added_ignore = [p for p in fragment.babel_ignore if p not in ignore]
    babel["ignore"] = ignore + added_ignore
    babel.setdefault("disablePlugins", [])
    babel.setdefault("outputPath", "")
    setting["babelSetting"] = babel
    config["setting"] = setting
    return config, {"include": added_include, "babelIgnore": added_ignore}


# --- files ------------------------------------------------------------------------------------


def _read_record(root: Path) -> dict[str, Any]:
    try:
        data = json.loads((root / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ProjectError(f"{path}: cannot read it: {err.strerror or err}") from err


def _parse(text: str, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ProjectError(
            f"{path}: not valid JSON ({err}); WeChat DevTools would refuse it too: fix it "
            "and build again"
        ) from err
    if not isinstance(data, dict):
        raise ProjectError(f"{path}: not a JSON object")
    return data


_INDENT = re.compile(r"^\{\s*\n([ \t]+)\S", re.MULTILINE)


def _dump(data: dict[str, Any], like: str) -> bytes:
    """JSON in the indentation of `like` (two spaces if it has none), UTF-8 as it is."""
    found = _INDENT.match(like)
    indent: str | int = found.group(1) if found else 2
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    return (text + ("\n" if like.endswith("\n") or not like else "")).encode("utf-8")


def _holds(folder: Path, files: Mapping[str, bytes], previous: Sequence[str] | None) -> bool:
    """True when `folder` holds these files with these bytes, and no other file of ours."""
    return previous is not None and set(previous) == set(files) and emit.holds(folder, files)


def _remove_owned(folder: Path, files: Sequence[str]) -> None:
    """Delete the files we wrote in `folder`, then the folders left empty; theirs stay."""
    for rel in files:
        with contextlib.suppress(OSError):
            (folder / rel).unlink()
    for base, _dirs, _names in sorted(os.walk(folder), key=lambda w: -len(w[0])):
        with contextlib.suppress(OSError):
            os.rmdir(base)
