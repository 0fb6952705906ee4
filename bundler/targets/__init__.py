"""The targets: each turns the models into the files of one platform.

A target is a plug-in: a module `bundler/targets/<name>/target.py` whose `TARGET` implements
`Target`. Two kinds exist. A tfjs target (wechat, web) ships the model stage's TensorFlow.js
artifacts with a tfjs runtime. An export target (tflite, keras) makes its own file from the
source model with TensorFlow, through its `exporter`; the model stage runs it, verifies the
file in the runtime that loads it, and caches the result like any conversion
(bundler/models/exports.py). The build asks every target of the manifest, in this order:

1. `shard_budget(config)`, `tfjs_version(config)` and `exporter(config)`, before models are
   converted: the largest brotli shard it can carry, the tfjs version its pages load the
   models with (None for both: it ships no tfjs), and how it exports a source model (None:
   it renders the tfjs artifacts);
2. `runtime_request(config)` and `runtimes(config)`: the tfjs runtime file the build makes
   for it (bundler/tfjs_runtime/; every model is verified in that very file), and any other
   npm packages it reads while rendering; the build installs them all (bundler/runtimes.py)
   before any target renders;
3. `render(config, models, runtimes, exports, store)`: every file it ships (paths relative
   to `out`) and its part of the report. Rendering is pure: no installs, no TensorFlow, no
   writes but what it keeps in the build cache `store` (`store.derived`: the web target's
   compressed forms, shared with the team when the cache is); emit.py writes the files.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bundler.manifest import Config
    from bundler.models.artifacts import ModelArtifacts
    from bundler.models.cache import Cache
    from bundler.models.exports import Export, Exporter
    from bundler.runtimes import NpmSet, Runtimes
    from bundler.tfjs_runtime.build import Request

# Every target, in the order the report and the terminal show them.
NAMES = ("wechat", "web", "tflite", "keras")


class TargetReport(Protocol):
    """A target's part of the report."""

    @property
    def warnings(self) -> tuple[str, ...]:
        """Lines for the report's warnings and the terminal."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The keys it adds to the report's top level."""
        ...

    def model_fields(self, name: str) -> dict[str, Any]:
        """The keys it adds to the report of model `name`."""
        ...


class ProjectWrite(Protocol):
    """What a target writes outside `out`: into the user's own project (a WeChat merge)."""

    def apply(self) -> bool:
        """Write it, after `out`; False when nothing changed."""
        ...


@dataclass(frozen=True)
class TargetOutput:
    """What a target renders: files by path relative to `out`, its report, and what it
    writes into an existing project (planned, conflicts found, nothing written yet)."""

    files: Mapping[str, bytes]
    report: TargetReport
    project: ProjectWrite | None = None


class Target(Protocol):
    """What a target implements; see the module docstring for when each is called."""

    name: str

    def shard_budget(self, config: Config) -> int | None:
        """The largest brotli-compressed shard the target can carry (None: no tfjs shards)."""
        ...

    def tfjs_version(self, config: Config) -> str | None:
        """The tfjs runtime that loads the models on this platform (None: no tfjs)."""
        ...

    def exporter(self, config: Config) -> Exporter | None:
        """How it makes its own file from a source model (None: a tfjs target)."""
        ...

    def runtime_request(self, config: Config) -> Request | None:
        """The tfjs runtime file to build for this target (None: it ships none)."""
        ...

    def runtimes(self, config: Config) -> Sequence[NpmSet]:
        """Other npm packages `render` reads."""
        ...

    def render(
        self,
        config: Config,
        models: Sequence[ModelArtifacts],
        runtimes: Runtimes,
        exports: Mapping[str, Export],
        store: Cache,
    ) -> TargetOutput:
        """Every file of the target and its report; raises a BundlerError when it cannot fit.

        `models` are the tfjs artifacts (none when no tfjs target is built); `exports` what
        this target's exporter made, by model name (empty for a tfjs target); `store` the
        build's cache, for files derived by a slow fixed step.
        """
        ...


def get(name: str) -> Target:
    """The target called `name` (one of NAMES)."""
    if name not in NAMES:
        raise KeyError(f"no target {name!r}; targets: {', '.join(NAMES)}")
    module = importlib.import_module(f"bundler.targets.{name}.target")
    target: Target = module.TARGET
    return target


def of(config: Config) -> tuple[Target, ...]:
    """The manifest's targets, in the order of NAMES."""
    return tuple(get(name) for name in NAMES if name in config.project.targets)


def ships_tfjs(config: Config) -> bool:
    """True when a target of the manifest ships the tfjs artifacts (the model stage's)."""
    return any(t.exporter(config) is None for t in of(config))
