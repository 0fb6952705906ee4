"""bundle.toml → a frozen, validated Config; every problem reported at once, by dotted path."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler import limits
from bundler.errors import ManifestError
from bundler.models import remote, sources
from bundler.targets import NAMES as TARGETS

# Without `targets`, a build makes what the tool was first made for: the mini-program and the
# site. TFLite and Keras files are asked for by name.
DEFAULT_TARGETS = ("wechat", "web")

DEFAULT_MANIFEST = "bundle.toml"
# Overrides [project] cache_dir (a folder, or an s3:// URL): for CI.
CACHE_VARIABLE = "BUNDLER_CACHE"

FORMATS = ("graph", "layers")
QUANTIZE_DTYPES = ("float16", "uint16", "uint8")
QUANTIZE_CHOICES = ("none", *QUANTIZE_DTYPES, "auto")
DELIVERIES = ("auto", "package", "remote")
WECHAT_CACHES = ("file", "storage")
FRAMEWORKS = ("native", "taro", "uniapp")  # [wechat] framework: what [wechat] project is
WEB_CACHES = ("indexeddb", "none")
KERAS_FORMATS = ("keras", "h5")  # [keras] format: Keras 3's archive, or the legacy HDF5 file

# Safe as a folder name, a WeChat subpackage root and a JS string: no `/`, `..`, quotes.
MODEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
VERSION = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$")
APPID = re.compile(rf"^({limits.TOURIST_APPID}|wx[0-9a-f]{{16}})$")
# The WeChat target always declares tfjsPlugin (app.json `plugins`), which the tourist appid
# may not use: the build says so in its warnings.
TOURIST_APPID_WARNING = (
    f'wechat.appid is "{limits.TOURIST_APPID}", under which WeChat runs no plugin: tfjsPlugin '
    'fails with "插件未授权使用" (plugin not authorized). Set it to your mini-program\'s appid, '
    f"and add tfjsPlugin ({limits.TFJS_PLUGIN_PROVIDER}) to that appid at "
    f"{limits.PLUGIN_CONSOLE}"
)


@dataclass(frozen=True)
class Quantize:
    """How a model's weights are quantized: `dtype_map` maps a dtype to weight-name patterns."""

    label: str | dict[str, list[str]]  # as the manifest said it, for the report
    dtype_map: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def is_none(self) -> bool:
        """True when no weight is quantized."""
        return not self.dtype_map and not self.is_auto

    @property
    def is_auto(self) -> bool:
        """True for "auto": the build picks each weight's dtype (models/auto.py)."""
        return self.label == "auto"


@dataclass(frozen=True)
class Constraints:
    """What a model must meet on its samples; "auto" picks the dtypes that meet them."""

    min_top1: float | None = None  # share of rows whose top class agrees with the source
    max_error: float | None = None  # largest absolute difference from the source
    max_bytes: int | None = None  # weight bytes

    @property
    def any(self) -> bool:
        """True when at least one constraint is given."""
        return any(v is not None for v in (self.min_top1, self.max_error, self.max_bytes))

    def to_json(self) -> dict[str, Any]:
        """The given constraints, by manifest key."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ModelConfig:
    """One `[[models]]` entry."""

    name: str
    source: Path
    input: sources.Source
    format: str
    quantize: Quantize
    delivery: str
    preload: tuple[str, ...]
    verify: bool
    shard_bytes: int | None
    # Real inputs to verify on (an .npz or .npy, rows first), and how many rows to take.
    samples: Path | None = None
    samples_limit: int | None = None
    # The shape of each input for made-up inputs, when the model's own have free sizes.
    input_shape: tuple[tuple[int, ...], ...] | None = None
    constraints: Constraints = field(default_factory=Constraints)


@dataclass(frozen=True)
class ProjectConfig:
    """The `[project]` table."""

    name: str
    out: Path
    targets: tuple[str, ...]
    cache_dir: Path
    verify: bool
    brotli_quality: int
    shard_bytes: int | None
    # A shared build cache (s3://bucket/prefix) behind cache_dir; BUNDLER_CACHE overrides.
    remote_cache: str | None = None
    require_cache: bool = False  # `build --require-cache`: an unusable shared cache is an error


@dataclass(frozen=True)
class WechatConfig:
    """The `[wechat]` table."""

    appid: str = limits.TOURIST_APPID
    plugin_version: str = limits.DEFAULT_TFJS_PLUGIN_VERSION
    tfjs_version: str = limits.DEFAULT_WECHAT_TFJS_VERSION
    remote_base_url: str | None = None
    cache: str = "file"
    limits: limits.WechatLimits = field(default_factory=limits.WechatLimits)
    # An existing mini-program project to merge into (the folder of its project.config.json);
    # None: generate a new project under <out>/wechat/.
    project: Path | None = None
    # What `project` is: a native DevTools project (merged in place), a Taro app (gets
    # model-bundler/ and a Taro plugin) or a uni-app (Vue 3 + Vite) app (gets wechat-bundle/ and
    # a Vite plugin); each plugin merges the bundle into the framework's build.
    framework: str = "native"
    demo_pages: bool = True  # a demo page per model; default off with `project`


@dataclass(frozen=True)
class WebConfig:
    """The `[web]` table."""

    cache: str = "indexeddb"
    tfjs_version: str = limits.DEFAULT_WEB_TFJS_VERSION
    tfjs_url: str | None = None


@dataclass(frozen=True)
class TfliteConfig:
    """The `[tflite]` table."""

    # Allow TensorFlow ops outside TFLite's builtins (the app then links the Flex delegate);
    # off, a model that needs them fails with their names.
    select_tf_ops: bool = False


@dataclass(frozen=True)
class KerasConfig:
    """The `[keras]` table."""

    format: str = "keras"


@dataclass(frozen=True)
class Config:
    """A whole manifest, validated, with every path absolute."""

    path: Path
    project: ProjectConfig
    wechat: WechatConfig
    web: WebConfig
    models: tuple[ModelConfig, ...]
    tflite: TfliteConfig = field(default_factory=TfliteConfig)
    keras: KerasConfig = field(default_factory=KerasConfig)

    @property
    def root(self) -> Path:
        """The folder the manifest's relative paths are resolved against."""
        return self.path.parent

    def shard_cap(self, model: ModelConfig) -> int:
        """The largest shard (after brotli) that every target of this build can carry."""
        from bundler import targets

        caps = [c for c in (model.shard_bytes, self.project.shard_bytes) if c is not None]
        caps += [b for t in targets.of(self) if (b := t.shard_budget(self)) is not None]
        return min(caps, default=limits.WEB_SHARD_BUDGET_BYTES)

    def tfjs_versions(self) -> tuple[str, ...]:
        """The tfjs runtimes that load this build's models, one per distinct version."""
        from bundler import targets

        versions = [target.tfjs_version(self) for target in targets.of(self)]
        return tuple(dict.fromkeys(v for v in versions if v is not None))

    def warnings(self) -> tuple[str, ...]:
        """What is valid yet will not work as it stands, one line each, for the report."""
        if "wechat" in self.project.targets and self.wechat.appid == limits.TOURIST_APPID:
            return (TOURIST_APPID_WARNING,)
        return ()


def load(path: Path | str | None = None) -> Config:
    """Read and validate a manifest; raise ManifestError listing every problem."""
    manifest = Path(path if path is not None else DEFAULT_MANIFEST)
    if manifest.is_dir():
        manifest = manifest / DEFAULT_MANIFEST
    manifest = Path(os.path.abspath(manifest))
    shown = display_path(manifest)
    try:
        text = manifest.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{shown}: no such file. Run `bundler init` to create a starter manifest."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{shown}: cannot be read ({err})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ManifestError(f"{shown}: not valid TOML: {err}") from None
    v = _Validator(manifest.parent)
    config = v.config(manifest, data)
    if v.problems:
        count = len(v.problems)
        noun = "problem" if count == 1 else "problems"
        raise ManifestError(f"{shown} has {count} {noun}:", problems=tuple(v.problems))
    assert config is not None
    return config


def requiring_cache(config: Config) -> Config:
    """`config` for `build --require-cache`; ManifestError when it names no shared cache."""
    if config.project.remote_cache is None:
        raise ManifestError(
            f"{display_path(config.path)}: --require-cache needs a shared cache: set "
            f'cache_dir = "s3://<bucket>/<prefix>" in [project], or {CACHE_VARIABLE}'
        )
    project = dataclasses.replace(config.project, require_cache=True)
    return dataclasses.replace(config, project=project)


def named_sources(path: Path) -> tuple[Path, ...]:
    """The absolute source paths the manifest's `[[models]]` name, unvalidated; () if unreadable."""
    manifest = Path(os.path.abspath(path))
    try:
        data = tomllib.loads(manifest.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ()
    models = data.get("models")
    if not isinstance(models, list):
        return ()
    found = []
    for model in models:
        source = model.get("source") if isinstance(model, dict) else None
        if isinstance(source, str) and _non_empty(source) is None:
            found.append(Path(os.path.abspath(manifest.parent / source)))
    return tuple(found)


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


# --- validation -------------------------------------------------------------------------------

_MISSING = object()


def _kind(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}
    if isinstance(value, dict):
        return "table"
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{...}"
    return repr(value)


def _choices(options: tuple[str, ...]) -> str:
    quoted = [f'"{o}"' for o in options]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


class _Validator:
    """Collects problems while reading the manifest's tables into typed configs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[str] = []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    # Tables and keys

    def table(self, data: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f'did you mean "{close[0]}"?' if close else "allowed: " + ", ".join(allowed)
                self.problem(_join(where, key), f"unknown key ({hint})")

    def sub(self, data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(
                _join(where, key), f"expected a table, got {_show(value)} ({_kind(value)})"
            )
            return {}
        return value

    def get(
        self,
        data: Mapping[str, Any],
        key: str,
        where: str,
        kind: type,
        default: Any = _MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        path = _join(where, key)
        if key not in data:
            if default is _MISSING:
                self.problem(path, "required")
                return None
            return default
        value = data[key]
        # TOML booleans are not integers here, whatever Python says.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            expected = {str: "a string", int: "an integer", bool: "true or false", list: "an array"}
            self.problem(path, f"expected {expected[kind]}, got {_show(value)} ({_kind(value)})")
            return None if default is _MISSING else default
        if check is not None:
            message = check(value)
            if message is not None:
                self.problem(path, message)
                return None if default is _MISSING else default
        return value

    def choice(
        self, data: Mapping[str, Any], key: str, where: str, options: tuple[str, ...], default: str
    ) -> str:
        def check(value: str) -> str | None:
            if value in options:
                return None
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            return f"{_show(value)} is not allowed; expected {_choices(options)}{hint}"

        result: str = self.get(data, key, where, str, default, check)
        return result

    # The manifest's parts

    def config(self, path: Path, data: Mapping[str, Any]) -> Config | None:
        self.table(data, "", ("project", "wechat", "web", "tflite", "keras", "models"))
        project = self.project(self.sub(data, "project", ""))
        wechat = self.wechat(self.sub(data, "wechat", ""), project.targets)
        web = self.web(self.sub(data, "web", ""))
        tflite = self.tflite(self.sub(data, "tflite", ""))
        keras = self.keras(self.sub(data, "keras", ""))
        models = self.models(data.get("models", _MISSING), project.targets)
        self.out_is_safe(project, models)
        if self.problems:
            return None
        return Config(
            path=path,
            project=project,
            wechat=wechat,
            web=web,
            models=models,
            tflite=tflite,
            keras=keras,
        )

    def out_is_safe(self, project: ProjectConfig, models: tuple[ModelConfig, ...]) -> None:
        """`out` is replaced whole on every build: it must hold nothing but the bundle."""
        out = project.out
        keep = [("the manifest's folder", self.root), ("cache_dir", project.cache_dir)]
        keep += [(f"the source of model {m.name!r}", m.source) for m in models]
        for what, path in keep:
            if path == out or path.is_relative_to(out):
                self.problem(
                    "project.out",
                    f"{display_path(out)} would hold {what} ({display_path(path)}), and every "
                    'build replaces out whole; choose a folder of its own, such as "dist"',
                )
                return

    def project(self, data: Mapping[str, Any]) -> ProjectConfig:
        w = "project"
        self.table(
            data,
            w,
            ("name", "out", "targets", "cache_dir", "verify", "brotli_quality", "shard_bytes"),
        )
        name = self.get(data, "name", w, str, self.root.name or "bundle")
        out = self.get(data, "out", w, str, "dist", _relative_folder)
        cache_raw = os.environ.get(CACHE_VARIABLE) or self.get(data, "cache_dir", w, str, None)
        remote_cache = None
        if cache_raw is not None and cache_raw.startswith("s3://"):
            remote_cache = cache_raw
            if remote.parse(cache_raw) is None:
                where = CACHE_VARIABLE if os.environ.get(CACHE_VARIABLE) else f"{w}.cache_dir"
                self.problem(
                    where,
                    f"{_show(cache_raw)} is not a shared cache URL; expected "
                    '"s3://<bucket>/<prefix>" or a folder',
                )
            cache_raw = None
        elif cache_raw is not None and (problem := _relative_folder(cache_raw)) is not None:
            self.problem(f"{w}.cache_dir", problem)
            cache_raw = None
        cache_dir = cache_raw or ".bundler-cache"
        targets_raw = self.get(data, "targets", w, list, list(DEFAULT_TARGETS))
        targets: list[str] = []
        for i, t in enumerate(targets_raw):
            where = f"{w}.targets[{i}]"
            if not isinstance(t, str) or t not in TARGETS:
                close = difflib.get_close_matches(t, TARGETS, n=1) if isinstance(t, str) else []
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.problem(
                    where, f"{_show(t)} is not a target; expected {_choices(TARGETS)}{hint}"
                )
            elif t in targets:
                self.problem(where, f"{_show(t)} is listed twice")
            else:
                targets.append(t)
        if isinstance(targets_raw, list) and not targets_raw:
            self.problem(f"{w}.targets", f"no target; expected one or more of {_choices(TARGETS)}")
        return ProjectConfig(
            name=name,
            out=Path(os.path.abspath(self.root / out)),
            targets=tuple(targets),
            cache_dir=Path(os.path.abspath(self.root / cache_dir)),
            verify=self.get(data, "verify", w, bool, True),
            brotli_quality=self.get(
                data, "brotli_quality", w, int, limits.DEFAULT_SHARD_BROTLI_QUALITY, _brotli_quality
            ),
            shard_bytes=self.get(data, "shard_bytes", w, int, None, _shard_bytes),
            remote_cache=remote_cache,
        )

    def wechat(self, data: Mapping[str, Any], targets: tuple[str, ...]) -> WechatConfig:
        w = "wechat"
        self.table(
            data,
            w,
            (
                "appid",
                "plugin_version",
                "tfjs_version",
                "remote_base_url",
                "cache",
                "limits",
                "project",
                "framework",
                "demo_pages",
            ),
        )
        project_raw = self.get(data, "project", w, str, None)
        project = Path(os.path.abspath(self.root / project_raw)) if project_raw else None
        base = WechatConfig()
        remote = self.get(data, "remote_base_url", w, str, None, _https_url)
        if remote is not None and not remote.endswith("/"):
            remote += "/"
        return WechatConfig(
            appid=self.get(data, "appid", w, str, base.appid, appid_problem),
            plugin_version=self.get(data, "plugin_version", w, str, base.plugin_version, _version),
            tfjs_version=self.get(data, "tfjs_version", w, str, base.tfjs_version, _version),
            remote_base_url=remote,
            cache=self.choice(data, "cache", w, WECHAT_CACHES, base.cache),
            limits=self.wechat_limits(self.sub(data, "limits", w)),
            project=project,
            framework=self.framework(data, project),
            demo_pages=self.demo_pages(data, project),
        )

    def framework(self, data: Mapping[str, Any], project: Path | None) -> str:
        value = self.choice(data, "framework", "wechat", FRAMEWORKS, "native")
        if project is None and "framework" in data:
            self.problem(
                "wechat.framework",
                "applies with [wechat] project only: set project to the app's folder",
            )
        if value != "native" and data.get("demo_pages") is True:
            self.problem(
                "wechat.demo_pages",
                f"applies to native projects only; a {value} app shows models in its own pages",
            )
        return value

    def demo_pages(self, data: Mapping[str, Any], project: Path | None) -> bool:
        value = self.get(data, "demo_pages", "wechat", bool, project is None)
        if project is None and value is False:
            self.problem(
                "wechat.demo_pages",
                "applies with [wechat] project only; a generated project always has its demo "
                "pages (remove the key)",
            )
        return bool(value)

    def wechat_limits(self, data: Mapping[str, Any]) -> limits.WechatLimits:
        w = "wechat.limits"
        self.table(data, w, limits.WECHAT_LIMIT_FIELDS)
        values = {
            key: self.get(data, key, w, int, None, _positive)
            for key in limits.WECHAT_LIMIT_FIELDS
            if key in data
        }
        chosen = {k: v for k, v in values.items() if v is not None}
        result = dataclasses.replace(limits.WechatLimits(), **chosen)
        if result.shard_budget_bytes <= 0:
            self.problem(
                f"{w}.subpackage_reserve_bytes",
                f"{result.subpackage_reserve_bytes} leaves no room for weights in a subpackage "
                f"of {result.subpackage_bytes} bytes",
            )
        return result

    def web(self, data: Mapping[str, Any]) -> WebConfig:
        w = "web"
        self.table(data, w, ("cache", "tfjs_version", "tfjs_url"))
        base = WebConfig()
        return WebConfig(
            cache=self.choice(data, "cache", w, WEB_CACHES, base.cache),
            tfjs_version=self.get(data, "tfjs_version", w, str, base.tfjs_version, _version),
            tfjs_url=self.get(data, "tfjs_url", w, str, None, _http_url),
        )

    def tflite(self, data: Mapping[str, Any]) -> TfliteConfig:
        self.table(data, "tflite", ("select_tf_ops",))
        return TfliteConfig(select_tf_ops=self.get(data, "select_tf_ops", "tflite", bool, False))

    def keras(self, data: Mapping[str, Any]) -> KerasConfig:
        self.table(data, "keras", ("format",))
        return KerasConfig(format=self.choice(data, "format", "keras", KERAS_FORMATS, "keras"))

    def models(self, raw: object, targets: tuple[str, ...]) -> tuple[ModelConfig, ...]:
        if raw is _MISSING:
            self.problem("models", "required: add at least one [[models]] table")
            return ()
        if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
            self.problem("models", f"expected an array of tables ([[models]]), got {_kind(raw)}")
            return ()
        if not raw:
            self.problem("models", "empty: add at least one [[models]] table")
        result = []
        seen: dict[str, int] = {}
        for i, data in enumerate(raw):
            model = self.model(data, f"models[{i}]")
            if model is None:
                continue
            self.reaches_targets(model, f"models[{i}]", targets)
            first = seen.setdefault(model.name.lower(), i)
            if first != i:
                self.problem(
                    f"models[{i}].name",
                    f"{_show(model.name)} is already the name of models[{first}]; "
                    "model names must be unique (ignoring case)",
                )
            result.append(model)
        return tuple(result)

    def model(self, data: Mapping[str, Any], w: str) -> ModelConfig | None:
        self.table(
            data,
            w,
            (
                "name",
                "source",
                "format",
                "quantize",
                "delivery",
                "preload",
                "verify",
                "shard_bytes",
                "samples",
                "samples_limit",
                "input_shape",
                "min_top1",
                "max_error",
                "max_bytes",
            ),
        )
        before = len(self.problems)
        name = self.get(data, "name", w, str, check=_model_name)
        source_text = self.get(data, "source", w, str, check=_non_empty)
        fmt = self.choice(data, "format", w, FORMATS, "graph")
        quantize = self.quantize(data.get("quantize", "none"), f"{w}.quantize")
        delivery = self.choice(data, "delivery", w, DELIVERIES, "auto")
        preload = self.get(data, "preload", w, list, [])
        for j, page in enumerate(preload):
            if not isinstance(page, str) or not page or page.startswith(("/", ".")):
                self.problem(
                    f"{w}.preload[{j}]",
                    f'expected a page path such as "pages/index/index", got {_show(page)}',
                )
        verify = self.get(data, "verify", w, bool, True)
        shard_bytes = self.get(data, "shard_bytes", w, int, None, _shard_bytes)
        samples = self.samples(data, w)
        samples_limit = self.get(data, "samples_limit", w, int, None, _positive)
        if samples_limit is not None and "samples" not in data:
            self.problem(f"{w}.samples_limit", "applies with samples only: set samples too")
        input_shape = self.input_shape(data, w)
        constraints = Constraints(
            min_top1=self.number(data, "min_top1", w, _share),
            max_error=self.number(data, "max_error", w, _positive_float),
            max_bytes=self.get(data, "max_bytes", w, int, None, _positive),
        )
        if quantize.is_auto and "samples" not in data:
            self.problem(
                f"{w}.quantize",
                "\"auto\" picks each weight's dtype on the model's samples: set samples = "
                '"<file>.npz" (real inputs, rows first)',
            )
        elif quantize.is_auto and not constraints.any:
            self.problem(
                f"{w}.quantize",
                '"auto" needs a constraint to meet: min_top1 (top-1 agreement, such as 0.99), '
                "max_error (largest absolute error) or max_bytes (weight bytes)",
            )
        source_input = None
        if source_text is not None:
            source = Path(os.path.abspath(self.root / source_text))
            try:
                source_input = sources.detect(source)
            except sources.SourceProblem as err:
                self.problem(f"{w}.source", f"{_show(source_text)}: {err} ({source})")
            else:
                if fmt == "layers" and source_input.kind == sources.TFJS_GRAPH:
                    self.problem(
                        f"{w}.format",
                        f'"layers" cannot be made from a TensorFlow.js graph model '
                        f'({_show(source_text)}); use format = "graph"',
                    )
        if len(self.problems) > before:
            return None
        assert source_input is not None
        return ModelConfig(
            name=name,
            source=source_input.path,
            input=source_input,
            format=fmt,
            quantize=quantize,
            delivery=delivery,
            preload=tuple(preload),
            verify=verify,
            shard_bytes=shard_bytes,
            samples=samples,
            samples_limit=samples_limit,
            input_shape=input_shape,
            constraints=constraints,
        )

    def number(
        self, data: Mapping[str, Any], key: str, w: str, check: Callable[[float], str | None]
    ) -> float | None:
        if key not in data:
            return None
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(f"{w}.{key}", f"expected a number, got {_show(value)} ({_kind(value)})")
            return None
        message = check(float(value))
        if message is not None:
            self.problem(f"{w}.{key}", message)
            return None
        return float(value)

    def samples(self, data: Mapping[str, Any], w: str) -> Path | None:
        text = self.get(data, "samples", w, str, None, _non_empty)
        if text is None:
            return None
        path = Path(os.path.abspath(self.root / text))
        if path.suffix.lower() not in (".npz", ".npy"):
            self.problem(
                f"{w}.samples",
                f"{_show(text)} is not an .npz or .npy file; save samples with numpy.savez "
                "(one array per input name) or numpy.save",
            )
        elif not path.is_file():
            self.problem(f"{w}.samples", f"{_show(text)}: not found ({path})")
        return path

    def input_shape(self, data: Mapping[str, Any], w: str) -> tuple[tuple[int, ...], ...] | None:
        raw = data.get("input_shape")
        if raw is None:
            return None
        where = f"{w}.input_shape"
        shapes = raw if isinstance(raw, list) and raw and isinstance(raw[0], list) else [raw]
        if not all(
            isinstance(shape, list)
            and shape
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
            for shape in shapes
        ):
            self.problem(
                where,
                "expected a shape such as [1, 224, 224, 3] (rows first, every size given), or "
                f"one such shape per input, got {_show(raw)}",
            )
            return None
        if "samples" in data:
            self.problem(where, "the samples give the inputs' shapes: remove input_shape")
            return None
        return tuple(tuple(shape) for shape in shapes)

    def reaches_targets(self, model: ModelConfig, w: str, targets: tuple[str, ...]) -> None:
        """Every target can be made from the model's source."""
        kind = model.input.kind
        graph = "a TensorFlow.js graph model, which holds no Keras layers"
        no_way = {
            "tflite": {sources.TFJS_GRAPH: graph},
            "keras": {
                sources.TFJS_GRAPH: graph,
                sources.SAVED_MODEL: "a SavedModel, which holds a graph, not Keras layers",
            },
        }
        for target, kinds in no_way.items():
            if target in targets and kind in kinds:
                self.problem(
                    f"{w}.source",
                    f'model "{model.name}" is {kinds[kind]}: target "{target}" cannot be made '
                    f"from it; give its Keras file (.keras or .h5) as source, or remove "
                    f'"{target}" from project.targets',
                )
        if "tflite" in targets and (
            not isinstance(model.quantize.label, str) or model.quantize.is_auto
        ):
            what = "picks a dtype per weight" if model.quantize.is_auto else "is a pattern table"
            self.problem(
                f"{w}.quantize",
                f'model "{model.name}": its quantize {what}, and TFLite quantizes a whole '
                'model; with target "tflite", use "none", "float16", "uint16" or "uint8"',
            )

    def quantize(self, raw: object, w: str) -> Quantize:
        if isinstance(raw, str):
            if raw in ("none", "auto"):
                return Quantize(raw)
            if raw in QUANTIZE_DTYPES:
                return Quantize(raw, ((raw, ("*",)),))
            close = difflib.get_close_matches(raw, QUANTIZE_CHOICES, n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            self.problem(
                w,
                f"{_show(raw)} is not allowed; expected {_choices(QUANTIZE_CHOICES)},"
                f" or a table of weight-name patterns per dtype{hint}",
            )
            return Quantize("none")
        if not isinstance(raw, dict):
            self.problem(w, f"expected a string or a table, got {_show(raw)} ({_kind(raw)})")
            return Quantize("none")
        self.table(raw, w, QUANTIZE_DTYPES)
        entries = []
        label: dict[str, list[str]] = {}
        for dtype in QUANTIZE_DTYPES:
            if dtype not in raw:
                continue
            patterns = raw[dtype]
            if isinstance(patterns, str):
                patterns = [patterns]
            if (
                not isinstance(patterns, list)
                or not patterns
                or not all(isinstance(p, str) and p for p in patterns)
            ):
                self.problem(
                    f"{w}.{dtype}",
                    f'expected an array of weight-name patterns such as ["dense*"], '
                    f"got {_show(raw[dtype])}",
                )
                continue
            entries.append((dtype, tuple(patterns)))
            label[dtype] = list(patterns)
        rest = [dtype for dtype, patterns in entries if "*" in patterns]
        if len(rest) > 1:
            self.problem(
                w,
                f'"*" is given to {_choices(tuple(rest))}; only one dtype can take '
                "the weights no other pattern names",
            )
        if not raw:
            self.problem(w, f"empty table; name at least one of {_choices(QUANTIZE_DTYPES)}")
        return Quantize(label, tuple(entries))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _non_empty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _relative_folder(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if value.strip() in (".", "./"):
        return "must be a folder of its own, not the manifest's folder"
    return None


def _model_name(value: str) -> str | None:
    if MODEL_NAME.match(value):
        return None
    return (
        f"{_show(value)} is not a safe model name; use a letter, then up to 63 letters, "
        "digits, '-' or '_' (it becomes a folder name and a JavaScript string)"
    )


def _version(value: str) -> str | None:
    return None if VERSION.match(value) else f'{_show(value)} is not a version like "3.21.0"'


def appid_problem(value: str) -> str | None:
    """Why `value` is not a WeChat appid, or None when it is one."""
    if APPID.match(value):
        return None
    return (
        f'{_show(value)} is not an appid; expected "wx" and 16 hex digits, '
        f'or "{limits.TOURIST_APPID}"'
    )


def _https_url(value: str) -> str | None:
    if re.match(r"^https://[^/\s]+(/\S*)?$", value):
        return None
    return f"{_show(value)} is not an https:// URL (WeChat downloads over HTTPS only)"


def _http_url(value: str) -> str | None:
    if re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        return None
    return f"{_show(value)} is not an http(s):// URL"


def _positive(value: int) -> str | None:
    return None if value > 0 else f"{value} must be greater than 0"


def _share(value: float) -> str | None:
    return None if 0 < value <= 1 else f"{value:g} is not a share; expected more than 0, at most 1"


def _positive_float(value: float) -> str | None:
    return None if value > 0 else f"{value:g} must be greater than 0"


def _brotli_quality(value: int) -> str | None:
    return None if 0 <= value <= 11 else f"{value} is not a brotli quality; expected 0 to 11"


def _shard_bytes(value: int) -> str | None:
    return None if value >= 1024 else f"{value} is too small; expected at least 1024 bytes"


def display_relative(path: Path, root: Path) -> str:
    """`path` relative to `root` in POSIX form when inside it, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
