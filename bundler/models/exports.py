"""Export targets' files (TFLite, Keras), made from the source model and cached.

A tfjs target renders the model stage's tfjs artifacts. An export target needs the source
model and TensorFlow instead: its `Exporter` converts the model, then checks the file in the
runtime that will load it (TFLite's interpreter, Keras reloading the file) on the inputs the
tfjs check uses, against the source model's predictions. Both happen here, in the model
stage, and the result is cached by fingerprint like any conversion, so rendering stays pure
and a rebuild with nothing changed imports no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bundler.errors import ModelError
from bundler.models import cache
from bundler.models.cache import Cache

if TYPE_CHECKING:
    from bundler.manifest import Config, ModelConfig
    from bundler.targets import Target

Progress = Callable[[str], None]

# The facts every exporter reports; the rest are its own.
ERROR = "max_abs_error"  # largest absolute difference from the source model, or None
RUNTIME = "runtime"  # what loaded the file to check it: "TensorFlow Lite 2.19.0"


@dataclass(frozen=True)
class Exported:
    """What an exporter made of one model: its files and what the report says of them."""

    files: Mapping[str, bytes]  # file name → bytes: {"digits.tflite": ...}
    facts: Mapping[str, Any]  # JSON values: ERROR, RUNTIME, and the exporter's own


class Exporter(Protocol):
    """How an export target makes its file from a source model."""

    kind: str  # the target's name: "tflite"

    def options(self, config: Config, model: ModelConfig) -> dict[str, Any]:
        """What else shapes the file (JSON values), for the cache's fingerprint."""
        ...

    def export(self, config: Config, model: ModelConfig, say: Progress) -> Exported:
        """Convert and check the model (TensorFlow loads here); ModelError when it cannot."""
        ...


@dataclass(frozen=True)
class Export:
    """One model's files for one export target, as the cache holds them."""

    files: Mapping[str, bytes]
    facts: Mapping[str, Any]
    hash: str  # names the model's folder: the files' content hash

    @property
    def bytes(self) -> int:
        """Bytes of its files."""
        return sum(len(data) for data in self.files.values())


def load(
    config: Config, chosen: Sequence[Target], say: Progress, done: Done
) -> dict[str, dict[str, Export]]:
    """Every export target's files for every model (target → model name → Export); the
    names of the models exported and reused go to `done`'s lists."""
    store = Cache(config.project.cache_dir)
    found: dict[str, dict[str, Export]] = {}
    for target in chosen:
        exporter = target.exporter(config)
        if exporter is None:
            continue
        found[target.name] = {
            m.name: _export(config, m, exporter, store, say, done) for m in config.models
        }
    return found


class Done(Protocol):
    """Where the build lists the models it converted and those it reused."""

    converted: list[str]
    reused: list[str]


def _export(
    config: Config,
    model: ModelConfig,
    exporter: Exporter,
    store: Cache,
    say: Progress,
    done: Done,
) -> Export:
    key = cache.fingerprint(model, {"export": exporter.kind, **exporter.options(config, model)})
    entry = store.get(key)
    (done.reused if entry is not None else done.converted).append(model.name)
    if entry is None:
        try:
            made = exporter.export(config, model, say)
        except ModelError as err:
            raise err.of(model.name) from err.__cause__
        entry = store.put(key, made.files, {"facts": dict(made.facts)}, [], [])
    files = {name: entry.read(name) for name in entry.files}
    # By key, as the cache's JSON holds them: a fresh export and a reused one read the same.
    facts = dict(sorted(entry.meta["facts"].items()))
    return Export(files, facts, entry.content_hash)
