"""Which file goes where in a WeChat mini-program: pure arithmetic over sizes and limits.

Weights never go into the main package. `package` delivery packs a model's brotli shards, in
order, into subpackages of at most `subpackage_bytes` each; `remote` leaves them for a CDN;
`auto` takes package delivery while the model fits the room left and remote otherwise.
A plan that cannot fit fails with the numbers and what to do.

A page that preloads a model (`preload` in the manifest) preloads the runtime subpackage
first, since the model cannot run without it, then the model's subpackages, all within the
one preload budget that the main package's pages share: what does not fit is left out of
`preloadRule` (and said so in `Plan.preload_warnings`), and downloads when first loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bundler.errors import PlanError
from bundler.limits import KB, WechatLimits

RUNTIME_ROOT = "tfjs"
MAIN_ROOT = "__APP__"  # the main package, as preloadRule names it


@dataclass(frozen=True)
class ModelFiles:
    """A model as the planner sees it: the bytes each of its files takes in a package."""

    name: str
    delivery: str  # "auto" | "package" | "remote" as the manifest asks
    model_json: tuple[str, int]  # (file name, bytes)
    shards: tuple[tuple[str, int], ...]  # (.br file name, bytes), in weightsManifest order
    preload: tuple[str, ...] = ()

    @property
    def package_bytes(self) -> int:
        """What the model adds to the packages when delivered in them."""
        return self.model_json[1] + sum(size for _, size in self.shards)


@dataclass
class Package:
    """One code package: its root, the files it holds and their bytes."""

    root: str
    limit: int
    files: list[tuple[str, int]] = field(default_factory=list)
    model: str | None = None

    @property
    def bytes(self) -> int:
        """The package's size."""
        return sum(size for _, size in self.files)


@dataclass(frozen=True)
class Plan:
    """Where everything goes."""

    packages: tuple[Package, ...]  # the main package first, then the runtime, then models
    delivery: dict[str, str]  # model → "package" | "remote"
    subpackages: dict[str, tuple[str, ...]]  # model → its subpackage roots, in order
    preload: dict[str, tuple[str, ...]]  # page → the roots it preloads, the runtime first
    # page → the roots it asked for that the preload budget left out
    not_preloaded: dict[str, tuple[str, ...]] = field(default_factory=dict)
    preload_warnings: tuple[str, ...] = ()  # one line per model (or runtime) left out


def model_root(model: str, index: int) -> str:
    """The root of a model's `index`-th subpackage (1-based)."""
    return f"models-{model}-{index}"


def plan(
    models: Sequence[ModelFiles],
    limits: WechatLimits,
    main_files: Sequence[tuple[str, int]],
    runtime_files: Sequence[tuple[str, int]],
    subpackage_files: Sequence[tuple[str, int]],
    remote_base_url: str | None,
    pages: Sequence[str],
) -> Plan:
    """Place the main package, the runtime subpackage and every model; PlanError if none fits.

    `subpackage_files` are the small files every model subpackage carries (its page and
    index.js); `pages` are the main package's pages, which alone may preload.
    """
    main = Package(MAIN_ROOT, limits.main_package_bytes, list(main_files))
    runtime = Package(RUNTIME_ROOT, limits.subpackage_bytes, list(runtime_files))
    _check_package(main, "the main package (the demo shell and the loader)")
    _check_package(
        runtime,
        "the tfjs runtime subpackage",
        "ship models of one format only: graph models need tfjs-converter and layers "
        "models tfjs-layers, and both do not fit one subpackage",
    )
    packages = [main, runtime]
    delivery: dict[str, str] = {}
    subpackages: dict[str, tuple[str, ...]] = {}

    def room() -> int:
        return limits.total_bytes - sum(p.bytes for p in packages)

    # Models that must be in the packages go first, then those that may be.
    order = sorted(models, key=lambda m: {"package": 0, "auto": 1, "remote": 2}[m.delivery])
    for model in order:
        if model.delivery == "remote":
            if remote_base_url is None:
                raise PlanError(
                    f'model "{model.name}": delivery = "remote" needs [wechat] remote_base_url, '
                    "the https:// address the shards will be downloaded from"
                )
            delivery[model.name] = "remote"
            continue
        placed = _split(model, limits, subpackage_files)
        extra = sum(p.bytes for p in placed)
        fits = extra <= room() and len(packages) - 1 + len(placed) <= limits.subpackage_count
        if fits:
            packages.extend(placed)
            delivery[model.name] = "package"
            subpackages[model.name] = tuple(p.root for p in placed)
        elif model.delivery == "auto" and remote_base_url is not None:
            delivery[model.name] = "remote"
        else:
            raise PlanError(_no_room(model, extra, room(), limits, remote_base_url))

    preload = _preload(models, packages, subpackages, limits, pages)
    by_manifest = {m.name: i for i, m in enumerate(models)}
    models_first = sorted(packages[2:], key=lambda p: (by_manifest[p.model or ""], p.root))
    return Plan(
        packages=(main, runtime, *models_first),
        delivery={m.name: delivery[m.name] for m in models},
        subpackages=subpackages,
        preload=preload.rules,
        not_preloaded=preload.left_out,
        preload_warnings=preload.warnings,
    )


def _split(
    model: ModelFiles, limits: WechatLimits, subpackage_files: Sequence[tuple[str, int]]
) -> list[Package]:
    """Cut the model's files, in order, into as few subpackages as fit the limit."""
    packages: list[Package] = []

    def new() -> Package:
        package = Package(
            model_root(model.name, len(packages) + 1),
            limits.subpackage_bytes,
            list(subpackage_files),
            model.name,
        )
        packages.append(package)
        return package

    current = new()
    for name, size in (model.model_json, *model.shards):
        if current.bytes + size > current.limit and current.bytes > _bytes(subpackage_files):
            current = new()
        current.files.append((f"{model.name}/{name}", size))
        if current.bytes > current.limit:
            raise PlanError(
                f'model "{model.name}": {name} takes {_kb(size)} and cannot fit one subpackage '
                f"({_kb(current.limit)} with its page); rebuild so shards are cut smaller "
                "(lower shard_bytes)"
            )
    return packages


@dataclass(frozen=True)
class _Preload:
    rules: dict[str, tuple[str, ...]]
    left_out: dict[str, tuple[str, ...]]
    warnings: tuple[str, ...]


def _preload(
    models: Sequence[ModelFiles],
    packages: Sequence[Package],
    subpackages: dict[str, tuple[str, ...]],
    limits: WechatLimits,
    pages: Sequence[str],
) -> _Preload:
    """preloadRule entries; the main package's pages share one preload budget.

    The models' subpackages alone must fit the budget (else PlanError: the manifest asks for
    what can never be preloaded). Each page that preloads a model preloads the runtime first,
    then the models' subpackages in manifest order, each if it fits what the budget has left.
    """
    asked: dict[str, list[str]] = {}
    for model in models:
        for page in model.preload:
            if page not in pages:
                raise PlanError(
                    f'model "{model.name}": preload names the page "{page}", which the app does '
                    f"not have; its pages are: {', '.join(pages)}"
                )
            asked.setdefault(page, []).extend(subpackages.get(model.name, ()))
    sizes = {p.root: p.bytes for p in packages}
    roots = {root for page_roots in asked.values() for root in page_roots}
    total = sum(sizes[r] for r in roots)
    if total > limits.preload_bytes:
        listed = ", ".join(f"{page} ({', '.join(r)})" for page, r in asked.items() if r)
        raise PlanError(
            f"the main package's pages preload {_kb(total)} of subpackages ({listed}), over the "
            f"{_kb(limits.preload_bytes)} that the pages of one package may preload together; "
            "preload fewer models, or quantize them"
        )
    if not asked:
        return _Preload({}, {}, ())

    # One budget for all the pages: a root that several pages preload counts once.
    wanted = [RUNTIME_ROOT, *(r for m in models for r in subpackages.get(m.name, ()) if r in roots)]
    chosen: list[str] = []
    refused: list[str] = []
    for root in wanted:
        fits = sum(sizes[r] for r in chosen) + sizes[root] <= limits.preload_bytes
        (chosen if fits else refused).append(root)
    rules: dict[str, tuple[str, ...]] = {}
    left_out: dict[str, tuple[str, ...]] = {}
    for page, page_roots in asked.items():
        own = [RUNTIME_ROOT, *dict.fromkeys(page_roots)]
        if preloaded := tuple(r for r in own if r in chosen):
            rules[page] = preloaded
        if skipped := tuple(r for r in own if r in refused):
            left_out[page] = skipped
    warnings = _preload_warnings(models, subpackages, sizes, chosen, refused, limits)
    return _Preload(rules, left_out, warnings)


def _preload_warnings(
    models: Sequence[ModelFiles],
    subpackages: dict[str, tuple[str, ...]],
    sizes: dict[str, int],
    chosen: Sequence[str],
    refused: Sequence[str],
    limits: WechatLimits,
) -> tuple[str, ...]:
    """One line for the runtime, or for each model, that the preload budget left out."""
    budget = f"the {_kb(limits.preload_bytes)} that the main package's pages may preload together"
    runtime = f"the tfjs runtime subpackage ({_kb(sizes[RUNTIME_ROOT])})"
    if RUNTIME_ROOT in refused:  # then every model subpackage fits: they fit alone (checked)
        return (f"{runtime} is not preloaded: it is over {budget}",)
    left = _kb(limits.preload_bytes - sum(sizes[r] for r in chosen))
    warnings = []
    for model in models:
        out = [r for r in subpackages.get(model.name, ()) if r in refused]
        if out:
            warnings.append(
                f'model "{model.name}": {", ".join(out)} ({_kb(sum(sizes[r] for r in out))}) '
                f"not preloaded: {runtime} is preloaded first within {budget}, and {left} of "
                f"it remains; {'they are' if len(out) > 1 else 'it is'} downloaded when a page "
                "first loads the model"
            )
    return tuple(warnings)


def _no_room(
    model: ModelFiles, extra: int, room: int, limits: WechatLimits, remote: str | None
) -> str:
    over = extra - room
    text = (
        f'model "{model.name}" needs {_kb(extra)} of subpackages, and the packages have '
        f"{_kb(max(room, 0))} left under the {_kb(limits.total_bytes)} limit for all packages "
        f"together ({_kb(over)} too many)"
    )
    if model.delivery == "package":
        return text + '; quantize it (uint8 takes a quarter of float32), or use delivery = "remote"'
    return text + (
        "; quantize it (uint8 takes a quarter of float32), or set [wechat] remote_base_url "
        "so that it is downloaded from your CDN"
        if remote is None
        else ""
    )


def _check_package(package: Package, what: str, advice: str = "") -> None:
    if package.bytes > package.limit:
        biggest = sorted(package.files, key=lambda f: -f[1])[:3]
        listed = ", ".join(f"{name} {_kb(size)}" for name, size in biggest)
        raise PlanError(
            f"{what} takes {_kb(package.bytes)}, over its {_kb(package.limit)} limit by "
            f"{_kb(package.bytes - package.limit)} (largest: {listed})"
            + (f"; {advice}" if advice else "")
        )


def _bytes(files: Sequence[tuple[str, int]]) -> int:
    return sum(size for _, size in files)


def _kb(n: int) -> str:
    return f"{n / KB:,.1f} KB"
