"""The WeChat target: a mini-program project under `<out>/wechat/`, and `<out>/remote/`.

Everything is gathered in memory: the tfjs runtime built for these models (one CommonJS file,
`tfjs/index.js`: no npm step, no "Build npm"), the plan (`plan.py`), then every file rendered
from templates/wechat/. The layout and the data handed to the glue are described in
docs/wechat-layout.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler import emit, limits
from bundler.errors import PlanError
from bundler.manifest import Config
from bundler.models.artifacts import BROTLI_SUFFIX, MODEL_JSON, ModelArtifacts
from bundler.models.cache import Cache
from bundler.models.exports import Export
from bundler.render import render
from bundler.runtimes import NpmSet, Runtimes
from bundler.targets import TargetOutput
from bundler.targets.wechat import merge, plan
from bundler.tfjs_runtime.build import Request

WECHAT_DIR = "wechat"
REMOTE_DIR = "remote"
LOADER_DIR = "bundler"
CACHE_DIR = "bundler-models"  # under wx.env.USER_DATA_PATH
HOME_PAGE = "pages/index/index"
SUBPACKAGE_PAGE = "pages/index/index"
# The folder a framework app gets (owned whole), which its plugin puts in the framework's build.
FRAMEWORK_BUNDLES = {"uniapp": "wechat-bundle", "taro": "model-bundler"}
FRAMEWORK_NAMES = {"uniapp": "uni-app", "taro": "Taro"}
FRAMEWORK_MARKS = {
    "uniapp": ("src/pages.json", "pages.json"),
    "taro": ("config/index.ts", "config/index.js"),
}
RUNTIME_FILE = "index.js"  # tfjs/index.js, the file the glue `require.async`s
REQUEST_TIMEOUT_MS = 60_000  # wx.request's default (official app.json doc)
DOWNLOAD_RETRIES = 3


@dataclass(frozen=True)
class PackageReport:
    """One code package of the plan: its root, its bytes and its limit."""

    root: str
    bytes: int
    limit: int


@dataclass(frozen=True)
class WechatReport:
    """The WeChat target's part of the report: its packages, and each model's delivery."""

    packages: tuple[PackageReport, ...]
    delivery: Mapping[str, str]  # model → "package" | "remote"
    preload: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    not_preloaded: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """`packages`, and what each page preloads, at the report's top level."""
        return {
            "packages": [dataclasses.asdict(p) for p in self.packages],
            "preload": {page: list(roots) for page, roots in self.preload.items()},
            "not_preloaded": {page: list(roots) for page, roots in self.not_preloaded.items()},
        }

    def model_fields(self, name: str) -> dict[str, Any]:
        """`delivery`, in each model's report."""
        return {"delivery": self.delivery[name]}


class WechatTarget:
    """A mini-program project under `<out>/wechat/`, and `<out>/remote/` for remote delivery."""

    name = "wechat"

    def shard_budget(self, config: Config) -> int:
        """A shard must fit one subpackage beside its page."""
        return config.wechat.limits.shard_budget_bytes

    def tfjs_version(self, config: Config) -> str | None:
        """The runtime tfjsPlugin supports."""
        return config.wechat.tfjs_version

    def runtime_request(self, config: Config) -> Request:
        """A CommonJS runtime of the version tfjsPlugin supports, exporting {tf, webgl, ...}."""
        return Request(config.wechat.tfjs_version, "wechat")

    def runtimes(self, config: Config) -> Sequence[NpmSet]:
        """No other npm packages."""
        return []

    def exporter(self, config: Config) -> None:
        """None: it ships the tfjs artifacts."""
        return None

    def render(
        self,
        config: Config,
        models: Sequence[ModelArtifacts],
        runtimes: Runtimes,
        exports: Mapping[str, Export],
        store: Cache,
    ) -> TargetOutput:
        """Plan and render the mini-program for these models; PlanError if it cannot fit."""
        files, report, merging = _render(config, models, runtimes)
        return TargetOutput(files, report, merging)


TARGET = WechatTarget()


def _render(
    config: Config, models: Sequence[ModelArtifacts], runtimes: Runtimes
) -> tuple[dict[str, bytes], WechatReport, merge.ProjectWrite | None]:
    wechat = config.wechat
    framework = wechat.framework
    existing = app_dir = None
    if wechat.project is not None and framework == "native":
        existing = _existing(wechat.project)
    elif wechat.project is not None:
        app_dir = _framework_app(wechat.project, framework)
    if app_dir is not None:
        # The app's pages are known once the framework has built it: its plugin checks them.
        app_pages = sorted({page for m in models for page in m.model.preload})
        shell = _glue_files(config)
        main_estimate = []
    elif existing is None:
        app_pages = [HOME_PAGE, *(model_page(m.name) for m in models)]
        shell = _shell_files(config, models)
        main_estimate = _estimate_generated(models)
    else:
        app_pages = existing.pages
        shell = _glue_files(config)
        if wechat.demo_pages:
            shell.update(_demo_pages(models, merged=True))
        main_estimate = [("(the project's own main package)", existing.main_bytes)]
    runtime = _runtime_files(runtimes.tfjs(WechatTarget.name).code)
    sub_files = _subpackage_files("models-x-1")
    planned = plan.plan(
        [_model_files(m) for m in models],
        wechat.limits,
        main_files=[(p, len(b)) for p, b in shell.items()]
        + main_estimate
        + [("(compiler helpers: @babel/runtime)", wechat.limits.compiler_helpers_bytes)],
        runtime_files=[(p, len(b)) for p, b in runtime.items()],
        subpackage_files=[(p, len(b)) for p, b in sub_files.items()],
        remote_base_url=wechat.remote_base_url,
        pages=app_pages,
    )

    files: dict[str, bytes] = {}
    if wechat.project is None:
        project = {**shell, **_generated(config, models, planned, app_pages)}
    else:
        project = {**shell, **_models_js(config, models, planned)}
    for rel, data in runtime.items():
        project[f"{plan.RUNTIME_ROOT}/{rel}"] = data
    for m in models:
        if planned.delivery[m.name] == "package":
            project.update(_model_subpackages(m, planned))
        else:
            for name, data in m.files.items():
                if name != MODEL_JSON + BROTLI_SUFFIX:
                    files[f"{REMOTE_DIR}/{m.name}/{m.hash}/{name}"] = data
    _check_uploadable(project)
    merging: merge.ProjectWrite | None = None
    theirs = 0
    if app_dir is not None:
        fragment = _fragment(config, models, planned)
        merging = _Tree(
            app_dir / FRAMEWORK_BUNDLES[framework], _framework_files(framework, project, fragment)
        )
    elif existing is not None:
        merged = merge.plan_merge(existing.project, project, _fragment(config, models, planned))
        merging = merged
        theirs = existing.main_bytes + merged.app_json_bytes
    main = (
        theirs
        + wechat.limits.compiler_helpers_bytes
        + sum(len(b) for p, b in project.items() if _package_of(p, planned) == plan.MAIN_ROOT)
    )
    if main > wechat.limits.main_package_bytes:
        raise PlanError(
            f"the main package takes {main:,} bytes, over its "
            f"{wechat.limits.main_package_bytes:,}-byte limit"
        )
    if wechat.project is None:
        for rel, data in project.items():
            files[f"{WECHAT_DIR}/{rel}"] = data

    packages = []
    for package in planned.packages:
        size = sum(len(b) for p, b in project.items() if _package_of(p, planned) == package.root)
        if package.root == plan.MAIN_ROOT:
            size += wechat.limits.compiler_helpers_bytes + theirs
        packages.append(PackageReport(package.root, size, package.limit))
    report = WechatReport(
        tuple(packages),
        dict(planned.delivery),
        preload={page: tuple(roots) for page, roots in planned.preload.items()},
        not_preloaded=dict(planned.not_preloaded),
        warnings=planned.preload_warnings,
    )
    return files, report, merging


def model_page(name: str, *, merged: bool = False) -> str:
    """The demo page of a model."""
    return f"{LOADER_DIR}/pages/{name}/index" if merged else f"pages/{name}/index"


# --- the runtime ----------------------------------------------------------------------------


def _runtime_files(code: bytes) -> dict[str, bytes]:
    """The runtime subpackage: the file built for this bundle, and the page a subpackage needs."""
    files = {RUNTIME_FILE: code}
    files.update(_page_files(plan.RUNTIME_ROOT))
    return files


# --- the shell and the generated data -------------------------------------------------------


def _glue_files(config: Config) -> dict[str, bytes]:
    """The glue that does not depend on the plan: the loader."""
    return {
        f"{LOADER_DIR}/loader.js": _text("wechat/bundler/loader.js.j2", settings=_settings(config))
    }


def _shell_files(config: Config, models: Sequence[ModelArtifacts]) -> dict[str, bytes]:
    """The files of the main package that do not depend on the plan."""
    files = {
        "app.js": _text("wechat/app.js.j2"),
        "app.wxss": _text("wechat/app.wxss.j2"),
        "sitemap.json": _text("wechat/sitemap.json.j2"),
        **_glue_files(config),
        f"{HOME_PAGE}.json": _text("wechat/pages/index/index.json.j2", title=config.project.name),
        f"{HOME_PAGE}.wxml": _text("wechat/pages/index/index.wxml.j2"),
        f"{HOME_PAGE}.wxss": _text("wechat/pages/index/index.wxss.j2"),
    }
    files.update(_demo_pages(models, merged=False))
    return files


def _demo_pages(models: Sequence[ModelArtifacts], *, merged: bool) -> dict[str, bytes]:
    """A demo page per model: pages/<name>/ in a generated project, bundler/pages/<name>/
    (inside the glue folder the build owns) in a merged one."""
    files = {}
    for m in models:
        page = model_page(m.name, merged=merged)
        loader = "../../loader.js" if merged else f"../../{LOADER_DIR}/loader.js"
        inputs = _inputs_data(m)
        files[f"{page}.js"] = _text(
            "wechat/pages/model/index.js.j2", name=m.name, inputs=inputs, loader=loader
        )
        files[f"{page}.json"] = _text("wechat/pages/model/index.json.j2", name=m.name)
        files[f"{page}.wxml"] = _text("wechat/pages/model/index.wxml.j2")
        files[f"{page}.wxss"] = _text("wechat/pages/model/index.wxss.j2")
    return files


def _settings(config: Config) -> dict[str, Any]:
    lim = config.wechat.limits
    return {
        "cache": config.wechat.cache,
        "cacheDir": CACHE_DIR,
        "concurrency": lim.concurrent_requests,
        "timeoutMs": REQUEST_TIMEOUT_MS,
        "retries": DOWNLOAD_RETRIES,
        "storageKeyBytes": lim.storage_key_bytes,
        "storageTotalBytes": lim.storage_total_bytes,
    }


def _estimate_generated(models: Sequence[ModelArtifacts]) -> list[tuple[str, int]]:
    """A generous size for the files that depend on the plan (app.json, models.js, ...)."""
    most_shards = max((len(m.shards) for m in models), default=0)
    per_model = limits.GENERATED_PER_MODEL_BYTES + limits.GENERATED_PER_SHARD_BYTES * most_shards
    return [
        (
            "(generated: app.json, project.config.json, models.js)",
            limits.GENERATED_BASE_BYTES + per_model * len(models),
        )
    ]


def _generated(
    config: Config,
    models: Sequence[ModelArtifacts],
    planned: plan.Plan,
    pages: list[str],
) -> dict[str, bytes]:
    """app.json, project.config.json, bundler/models.js and the home page's data."""
    subpackages = [
        {"root": plan.RUNTIME_ROOT, "name": plan.RUNTIME_ROOT, "pages": [SUBPACKAGE_PAGE]}
    ]
    for m in models:
        for root in planned.subpackages.get(m.name, ()):
            subpackages.append({"root": root, "name": root, "pages": [SUBPACKAGE_PAGE]})
    app: dict[str, Any] = {
        "pages": pages,
        "subPackages": subpackages,
        "plugins": {
            "tfjsPlugin": {
                "version": config.wechat.plugin_version,
                "provider": limits.TFJS_PLUGIN_PROVIDER,
            }
        },
        "window": {"navigationBarTitleText": config.project.name},
        "networkTimeout": {"request": REQUEST_TIMEOUT_MS},
        "sitemapLocation": "sitemap.json",
    }
    if planned.preload:
        app["preloadRule"] = {
            page: {"packages": list(roots), "network": "all"}
            for page, roots in planned.preload.items()
        }
    include = [
        {"type": "folder", "value": root}
        for m in models
        for root in planned.subpackages.get(m.name, ())
    ]
    project = {
        "appid": config.wechat.appid,
        "projectname": config.project.name,
        "compileType": "miniprogram",
        "libVersion": limits.WECHAT_BASE_LIBRARY,
        "description": "Generated by the model bundler; its report is bundle-report.json in out/.",
        "setting": {
            "es6": True,
            "enhance": True,
            "minified": True,
            "ignoreUploadUnusedFiles": True,
            # The runtime is built for the language level WeChat's base library runs
            # (es2017) and minified already: the compiler's es6 → es5 pass would only make
            # it 20% larger (measured with miniprogram-ci).
            "babelSetting": {
                "ignore": [f"{plan.RUNTIME_ROOT}/{RUNTIME_FILE}"],
                "disablePlugins": [],
                "outputPath": "",
            },
        },
        "packOptions": {
            # Model files are read by path, never `require`d: without this, DevTools may drop
            # them as unused when ignoreUploadUnusedFiles is on.
            "include": include,
        },
    }
    home = [
        {
            "name": m.name,
            "format": m.format,
            "delivery": planned.delivery[m.name],
            "size": f"{m.brotli_bytes / 1024:,.0f} KB",
        }
        for m in models
    ]
    return {
        "app.json": _text("wechat/app.json.j2", app=app),
        "project.config.json": _text("wechat/project.config.json.j2", project=project),
        **_models_js(config, models, planned),
        f"{HOME_PAGE}.js": _text("wechat/pages/index/index.js.j2", models=home),
    }


def _models_js(
    config: Config, models: Sequence[ModelArtifacts], planned: plan.Plan
) -> dict[str, bytes]:
    data = _models_data(config, models, planned)
    return {f"{LOADER_DIR}/models.js": _text("wechat/bundler/models.js.j2", models=data)}


# --- merging into an existing project -------------------------------------------------------


@dataclass(frozen=True)
class _Existing:
    """What the build reads of an existing project before planning."""

    project: Path
    pages: list[str]
    main_bytes: int  # its main package's files on disk, less app.json (merged later)


class _Tree:
    """A folder the build owns whole in the user's app (model-bundler/, wechat-bundle/)."""

    def __init__(self, folder: Path, files: Mapping[str, bytes]) -> None:
        self.folder = folder
        self.files = files

    def apply(self) -> bool:
        """Write it as emit writes `out`: what the build did not write there stays."""
        return emit.write_tree(self.folder, self.files)


def _framework_app(project: Path, framework: str) -> Path:
    """A Taro or uni-app project's folder; ProjectError when it is not one."""
    marks = FRAMEWORK_MARKS[framework]
    if not any((project / mark).is_file() for mark in marks):
        name = FRAMEWORK_NAMES[framework]
        raise merge.ProjectError(
            f"{project}: no {marks[0]} there, so it is not a {name} project; set [wechat] "
            'project to the folder of its package.json, or framework = "native" for a '
            "WeChat DevTools project"
        )
    return project


def _framework_files(
    framework: str, project: Mapping[str, bytes], fragment: merge.Fragment
) -> dict[str, bytes]:
    """What a framework app gets: the owned folders, fragment.json (what its plugin merges into
    the built app.json and project.config.json) and the plugin."""
    data = _fragment_json(project, fragment)
    templates = f"wechat/frameworks/{framework}"
    if framework == "uniapp":
        return {
            **project,
            "fragment.json": data,
            "vite-plugin.mjs": _text(f"{templates}/vite-plugin.mjs.j2"),
        }
    return {
        **{f"wechat/{rel}": content for rel, content in project.items()},
        "fragment.json": data,
        "taro-plugin.js": _text(f"{templates}/taro-plugin.js.j2"),
        "index.js": _text(f"{templates}/index.js.j2"),
        "index.d.ts": _text(f"{templates}/index.d.ts.j2"),
    }


def _fragment_json(project: Mapping[str, bytes], fragment: merge.Fragment) -> bytes:
    folders = sorted({rel.split("/", 1)[0] for rel in project})
    data = {
        "generator": "model bundler",
        "note": "Merged into the mp-weixin build by vite-plugin.mjs; the bundler rewrites it.",
        "folders": folders,
        "app": {
            "subPackages": [dict(s) for s in fragment.subpackages],
            **(
                {
                    "preloadRule": {
                        page: {"packages": list(roots), "network": "all"}
                        for page, roots in fragment.preload.items()
                    }
                }
                if fragment.preload
                else {}
            ),
            "plugins": {"tfjsPlugin": dict(fragment.plugin)},
        },
        "projectConfig": {
            "setting": {"babelSetting": {"ignore": list(fragment.babel_ignore)}},
            "packOptions": {"include": [{"type": "folder", "value": v} for v in fragment.include]},
        },
    }
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def _existing(project: Path) -> _Existing:
    root = merge.mini_program_root(project)
    app = merge.read_app(root)
    subs = app.get("subPackages", app.get("subpackages", []))
    their_roots = {str(s.get("root", "")).strip("/") for s in subs if isinstance(s, dict)}
    ours = merge.owned_folders(root)
    main = 0
    for base, dirs, names in os.walk(root):
        rel = Path(base).relative_to(root)
        if rel.parts and (rel.parts[0] in their_roots | ours or rel.parts[0] == "node_modules"):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not rel.parts and name in (merge.APP_JSON, *merge.PROJECT_FILES):
                continue
            if Path(name).suffix.lstrip(".") in limits.UPLOAD_KEPT_EXTENSIONS:
                main += (Path(base) / name).stat().st_size
    pages = [p for p in app.get("pages", []) if isinstance(p, str)]
    return _Existing(project, pages, main)


def _fragment(
    config: Config, models: Sequence[ModelArtifacts], planned: plan.Plan
) -> merge.Fragment:
    subpackages = [
        {"root": plan.RUNTIME_ROOT, "name": plan.RUNTIME_ROOT, "pages": [SUBPACKAGE_PAGE]}
    ]
    model_roots = [root for roots in planned.subpackages.values() for root in roots]
    subpackages += [{"root": r, "name": r, "pages": [SUBPACKAGE_PAGE]} for r in model_roots]
    return merge.Fragment(
        subpackages=tuple(subpackages),
        preload={page: tuple(roots) for page, roots in planned.preload.items()},
        plugin={
            "version": config.wechat.plugin_version,
            "provider": limits.TFJS_PLUGIN_PROVIDER,
        },
        include=tuple(model_roots),
        babel_ignore=(f"{plan.RUNTIME_ROOT}/{RUNTIME_FILE}",),
        pages=tuple(model_page(m.name, merged=True) for m in models)
        if config.wechat.demo_pages
        else (),
    )


def _models_data(
    config: Config, models: Sequence[ModelArtifacts], planned: plan.Plan
) -> dict[str, Any]:
    data = {}
    for m in models:
        h = m.hash
        remote = planned.delivery[m.name] == "remote"
        roots = planned.subpackages.get(m.name, ())
        where = _file_roots(m, planned)
        base = f"{config.wechat.remote_base_url}{m.name}/{h}/" if remote else None
        model_json = m.model_json
        shards: list[dict[str, Any]] = []
        for shard in m.shards:
            name, raw, br = shard.name, shard.raw, shard.brotli
            shards.append(
                {
                    "path": None
                    if remote
                    else f"{where[name + BROTLI_SUFFIX]}/{m.name}/{h}/{name}{BROTLI_SUFFIX}",
                    "url": f"{base}{name}" if base else None,
                    "bytes": len(br),
                    "sha256": _sha256(br),
                    "rawBytes": len(raw),
                    "rawSha256": _sha256(raw),
                }
            )
        data[m.name] = {
            "name": m.name,
            "hash": h,
            "format": m.format,
            "delivery": planned.delivery[m.name],
            "subpackages": list(roots),
            "modelJson": {
                "path": None if remote else f"{where[MODEL_JSON]}/{m.name}/{h}/{MODEL_JSON}",
                "url": f"{base}{MODEL_JSON}" if base else None,
                "bytes": len(model_json),
                "sha256": _sha256(model_json),
            },
            "shards": shards,
            "weightBytes": sum(s["rawBytes"] for s in shards),
            "inputs": _inputs_data(m),
        }
    return data


# --- model subpackages ----------------------------------------------------------------------


def _inputs_data(m: ModelArtifacts) -> list[dict[str, Any]]:
    """The model's inputs as the glue reads them, each free size taken as 1."""
    return [{"name": s.name, "shape": s.example_shape(), "dtype": s.dtype} for s in m.inputs]


def _model_files(m: ModelArtifacts) -> plan.ModelFiles:
    return plan.ModelFiles(
        name=m.name,
        delivery=m.model.delivery,
        model_json=(f"{m.hash}/{MODEL_JSON}", len(m.model_json)),
        shards=tuple(
            (f"{m.hash}/{shard.name}{BROTLI_SUFFIX}", len(shard.brotli)) for shard in m.shards
        ),
        preload=m.model.preload,
    )


def _file_roots(m: ModelArtifacts, planned: plan.Plan) -> dict[str, str]:
    """Artifact file name → the subpackage root it was planned into."""
    where = {}
    for package in planned.packages:
        if package.model != m.name:
            continue
        for path, _ in package.files:
            prefix = f"{m.name}/{m.hash}/"
            if path.startswith(prefix):
                where[path[len(prefix) :]] = package.root
    return where


def _model_subpackages(m: ModelArtifacts, planned: plan.Plan) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    h = m.hash
    contents = m.files
    for package in planned.packages:
        if package.model != m.name:
            continue
        own = []
        for path, _ in package.files:
            prefix = f"{m.name}/{h}/"
            if path.startswith(prefix):
                files[f"{package.root}/{path}"] = contents[path[len(prefix) :]]
                own.append(path)
        content = {"model": m.name, "hash": h, "files": own}
        files[f"{package.root}/index.js"] = _text("wechat/subpackage/index.js.j2", content=content)
        files.update({f"{package.root}/{k}": v for k, v in _page_files(package.root).items()})
    return files


def _subpackage_files(root: str) -> dict[str, bytes]:
    """A model subpackage's own small files, for sizing: its page and index.js."""
    files = _page_files(root)
    files["index.js"] = _text("wechat/subpackage/index.js.j2", content={"files": []})
    return files


def _page_files(root: str) -> dict[str, bytes]:
    return {
        f"{SUBPACKAGE_PAGE}.{ext}": _text(f"wechat/subpackage/page.{ext}.j2", root=root)
        for ext in ("js", "json", "wxml", "wxss")
    }


# --- checks and helpers ---------------------------------------------------------------------


def _check_uploadable(project: dict[str, bytes]) -> None:
    """Every file must have an extension that upload keeps, or WeChat drops it silently."""
    dropped = [
        p for p in project if Path(p).suffix.lstrip(".") not in limits.UPLOAD_KEPT_EXTENSIONS
    ]
    if dropped:
        raise PlanError(
            f"{len(dropped)} generated file(s) would be dropped at upload (their types are not "
            f"kept): {', '.join(sorted(dropped)[:5])}"
        )


def _package_of(path: str, planned: plan.Plan) -> str:
    first = path.split("/", 1)[0]
    for package in planned.packages[1:]:
        if first == package.root:
            return package.root
    return plan.MAIN_ROOT


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _text(template: str, **data: Any) -> bytes:
    return render(template, **data).encode("utf-8")
