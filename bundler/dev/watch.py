"""`bundler watch`: build, then rebuild once per burst of changes to the manifest, a model
source or a template.

The watchdog callback only records which watched path changed. One loop waits until the
files settle (no change for `debounce` seconds), then re-reads the manifest, re-computes
what to watch and builds once. A failed rebuild is reported and leaves the last good bundle
where it was (the build writes nothing until it has everything); the next good save recovers.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from bundler import build, emit, manifest
from bundler.build import Progress, Result
from bundler.errors import ManifestError
from bundler.manifest import Config
from bundler.models import sources
from bundler.render import TEMPLATES

log = logging.getLogger(__name__)

# Long enough to join an editor's write-rename-chmod into one burst, short enough to feel
# immediate (mkdocs waits 0.1 s; model files are larger and written more slowly).
DEBOUNCE_SECONDS = 0.2
# How often the loop looks at `stop` while nothing is happening.
STOP_POLL_SECONDS = 0.1
# Reads of the manifest per build while each read names folders not yet watched.
_MAX_READS = 3

# Events that can change a file's bytes; opening or reading a file (the build does) cannot.
_CHANGES = frozenset(
    (
        EVENT_TYPE_CREATED,
        EVENT_TYPE_DELETED,
        EVENT_TYPE_MODIFIED,
        EVENT_TYPE_MOVED,
        EVENT_TYPE_CLOSED,
    )
)
# Swap, backup and lock files of common editors, and vim's write probe.
EDITOR_TEMP_FILES = (
    "*~",
    "*.swp",
    "*.swx",
    "*.swo",
    ".#*",
    "#*#",
    "4913",
    "*___jb_tmp___",
    "*___jb_old___",
    ".goutputstream-*",
    ".DS_Store",
)

Builder = Callable[[Config, Progress | None], Result]
Loader = Callable[[Path], Config]


@dataclass(frozen=True)
class Target:
    """A watched path: a file, or a folder (`tree`) where any change inside counts."""

    path: Path
    tree: bool = False

    def matches(self, path: Path) -> bool:
        """True when a change at `path` is a change of this target."""
        return path == self.path or (self.tree and path.is_relative_to(self.path))


# What the loop reports, in this order for each build: Started, then Watching when the
# watched set changed, then Built or Failed.


@dataclass(frozen=True)
class Started:
    """A build begins; `changed` started it (empty for the first build)."""

    changed: tuple[Path, ...]


@dataclass(frozen=True)
class Watching:
    """The watched set changed (the first time, or the manifest now names other sources)."""

    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Built:
    """A build succeeded and its bundle is in place."""

    changed: tuple[Path, ...]
    config: Config
    result: Result


@dataclass(frozen=True)
class Failed:
    """A build failed; the previous bundle is untouched. A BundlerError is the user's to fix;
    any other exception is a bug of ours."""

    changed: tuple[Path, ...]
    error: Exception
    seconds: float


Event = Started | Watching | Built | Failed


def watch(
    manifest_path: Path | str,
    *,
    on_event: Callable[[Event], None],
    stop: threading.Event,
    debounce: float = DEBOUNCE_SECONDS,
    builder: Builder = build.build,
    loader: Loader = manifest.load,
    templates: Path = TEMPLATES,
    progress: Progress | None = None,
) -> None:
    """Build, then rebuild after each burst of changes, until `stop` is set."""
    Watcher(
        manifest_path,
        on_event=on_event,
        debounce=debounce,
        builder=builder,
        loader=loader,
        templates=templates,
        progress=progress,
    ).run(stop)


class Watcher:
    """The watched set, the changes recorded since the last build, and the build loop."""

    def __init__(
        self,
        manifest_path: Path | str,
        *,
        on_event: Callable[[Event], None],
        debounce: float = DEBOUNCE_SECONDS,
        builder: Builder = build.build,
        loader: Loader = manifest.load,
        templates: Path = TEMPLATES,
        progress: Progress | None = None,
    ) -> None:
        path = Path(manifest_path)
        if path.is_dir():
            path = path / manifest.DEFAULT_MANIFEST
        if not path.is_file():
            raise ManifestError(
                f"{manifest.display_path(path.absolute())}: no such file. "
                "Run `bundler init` to create a starter manifest."
            )
        self.manifest = _real(path)
        self.debounce = debounce
        self._on_event = on_event
        self._builder = builder
        self._loader = loader
        self._templates = _real(templates)
        self._progress = progress
        self._changed = threading.Condition()
        self._pending: set[Path] = set()
        self._last_change = 0.0
        # Read by the watchdog thread; each is replaced whole, never mutated.
        self._targets: tuple[Target, ...] = ()
        self._ignored: tuple[Path, ...] = ()
        self._out: Path | None = None
        self._handler = _Recorder(self)
        self._watches: dict[_Folder, ObservedWatch] = {}

    @property
    def targets(self) -> tuple[Target, ...]:
        """What is watched now."""
        return self._targets

    def run(self, stop: threading.Event) -> None:
        """Build once, then once per settled burst of changes, until `stop` is set."""
        observer = Observer()
        observer.start()
        try:
            self._rebuild((), observer)
            while not stop.is_set():
                changed = self._wait_for_burst(stop)
                if changed:
                    self._rebuild(changed, observer)
        finally:
            observer.stop()
            observer.join(timeout=5)
            self._watches.clear()

    def record(self, path: Path) -> None:
        """Note that `path` changed, if it is watched and not ignored (any thread may call)."""
        path = _real(path)
        if self.is_ignored(path):
            return
        if not any(_spot_matches(t, path) for t in self._targets):
            return
        with self._changed:
            self._pending.add(path)
            self._last_change = time.monotonic()
            self._changed.notify()

    def is_ignored(self, path: Path) -> bool:
        """True for what the build writes (out, the cache, emit's temporary folders, the
        project a WeChat merge writes into) and for editors' temporary files."""
        if any(path.is_relative_to(folder) for folder in self._ignored):
            return True
        if self._out is not None and emit.is_temporary(path, self._out):
            return True
        return any(fnmatch.fnmatchcase(path.name, pattern) for pattern in EDITOR_TEMP_FILES)

    # The loop

    def _wait_for_burst(self, stop: threading.Event) -> tuple[Path, ...]:
        """The paths changed in the next burst, once no change came for `debounce` seconds;
        empty when `stop` was set first."""
        with self._changed:
            while not stop.is_set():
                if not self._pending:
                    self._changed.wait(STOP_POLL_SECONDS)
                    continue
                quiet = time.monotonic() - self._last_change
                if quiet >= self.debounce:
                    changed = tuple(sorted(self._pending))
                    self._pending.clear()
                    return changed
                self._changed.wait(min(self.debounce - quiet, STOP_POLL_SECONDS))
        return ()

    def _rebuild(self, changed: tuple[Path, ...], observer: BaseObserver) -> None:
        self._on_event(Started(changed))
        started = time.perf_counter()
        try:
            config = self._load(observer)
            result = self._builder(config, self._progress)
        except Exception as error:
            log.debug("build failed: %s: %s", type(error).__name__, error)
            self._on_event(Failed(changed, error, time.perf_counter() - started))
        else:
            self._on_event(Built(changed, config, result))

    def _load(self, observer: BaseObserver) -> Config:
        """Read the manifest and watch what it names. A folder newly watched may have changed
        before its watch began, so the manifest is read again until nothing new is watched:
        what the build reads is then either read after its watch began or seen changing."""
        for _ in range(_MAX_READS):
            try:
                config = self._loader(self.manifest)
            except ManifestError as err:
                # Keep watching what the last good manifest named, and whatever this one names,
                # so that creating a missing model file or fixing the manifest recovers.
                problem: ManifestError | None = err
                targets = self._base() + self._targets + self._named_targets()
            else:
                problem = None
                self._out = _real(config.project.out)
                self._ignored = (self._out, _real(config.project.cache_dir))
                if config.wechat.project is not None:
                    # A merge writes into the project: its own files are not the build's input.
                    self._ignored += (_real(config.wechat.project),)
                targets = self._config_targets(config)
            if not self._retarget(targets, observer):
                break
        if problem is not None:
            raise problem
        return config

    # What to watch

    def _base(self) -> tuple[Target, ...]:
        """Watched whatever the manifest says: the manifest itself and the templates."""
        return (Target(self.manifest), Target(self._templates, tree=True))

    def _config_targets(self, config: Config) -> tuple[Target, ...]:
        targets = list(self._base())
        for model in config.models:
            path = _real(model.input.path)
            if model.input.kind == sources.SAVED_MODEL:
                targets.append(Target(path, tree=True))
            elif model.input.kind in (sources.TFJS_LAYERS, sources.TFJS_GRAPH):
                # model.json names its shards, which live beside it.
                targets.append(Target(path.parent, tree=True))
            else:
                targets.append(Target(path))
        return tuple(dict.fromkeys(targets))

    def _named_targets(self) -> tuple[Target, ...]:
        """Targets for the model sources a manifest names, read without validating it."""
        targets = []
        for source in manifest.named_sources(self.manifest):
            path = _real(source)
            if path.suffix.lower() == ".json":
                targets.append(Target(path.parent, tree=True))
            else:
                targets.append(Target(path, tree=path.is_dir() or not path.suffix))
        return tuple(targets)

    def _retarget(self, targets: Iterable[Target], observer: BaseObserver) -> bool:
        """Watch exactly `targets` from now on; True when a folder is newly observed."""
        targets = tuple(dict.fromkeys(targets))
        if set(targets) != set(self._targets):
            self._on_event(Watching(targets))
        self._targets = targets
        wanted = set(_folders(targets))
        added = False
        # New watches first, old ones after: what stays watched is never unwatched meanwhile.
        for folder in sorted(wanted - self._watches.keys()):
            try:
                self._watches[folder] = observer.schedule(
                    self._handler, str(folder.path), recursive=folder.recursive
                )
                added = True
            except OSError as err:  # gone since we looked; its parent's watch sees it return
                log.debug("cannot watch %s: %s", folder.path, err)
        for folder in self._watches.keys() - wanted:
            observer.unschedule(self._watches.pop(folder))
        return added


class _Recorder(FileSystemEventHandler):
    """The watchdog callback: records changed paths, nothing else."""

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
        if event.is_directory and event.event_type == EVENT_TYPE_MODIFIED:
            return  # a file inside changed; that file's own event says which
        for raw in (event.src_path, event.dest_path):
            if raw:
                self._watcher.record(Path(os.fsdecode(raw)))


@dataclass(frozen=True, order=True)
class _Folder:
    """A folder to observe. The inode tells a folder replaced since (a SavedModel written
    again) from the one watched before, whose watch went with it."""

    path: Path
    recursive: bool
    inode: int


def _folders(targets: Iterable[Target]) -> list[_Folder]:
    """The folders to observe for `targets`, without overlaps."""
    wanted: set[tuple[Path, bool]] = set()
    for target in targets:
        anchor = _existing_ancestor(target.path)
        if anchor == target.path and target.tree and anchor.is_dir():
            wanted.add((anchor, True))
            # The parent sees the folder itself deleted, moved or replaced.
            wanted.add((anchor.parent, False))
        elif anchor == target.path:
            wanted.add((anchor.parent, False))
        else:
            # Missing: watch the closest folder that exists for the path being created.
            wanted.add((anchor, False))
    trees = [folder for folder, recursive in wanted if recursive]

    def covered(folder: Path, recursive: bool) -> bool:
        return any(
            folder.is_relative_to(tree) and (folder != tree or not recursive) for tree in trees
        )

    folders = []
    for folder, recursive in sorted(wanted):
        if covered(folder, recursive):
            continue
        try:
            folders.append(_Folder(folder, recursive, folder.stat().st_ino))
        except OSError:
            continue  # gone meanwhile; the next change re-computes
    return folders


def _spot_matches(target: Target, path: Path) -> bool:
    """`target.matches(path)`, or `path` is a folder on the way to the target (created while
    the target is missing, or removed with it)."""
    if target.matches(path):
        return True
    return path in target.path.parents and not path.is_relative_to(target.path.parent)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _real(path: Path) -> Path:
    """An absolute path with symlinks resolved, as watchdog reports them."""
    return Path(os.path.realpath(path))
