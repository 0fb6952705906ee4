"""What the export targets (tflite, keras) share: files under `<out>/<kind>/`, and the report.

    <out>/<kind>/<name>/<hash>/<name>.<ext>     one folder per model, named by its bytes

The exporter did the work in the model stage (bundler/models/exports.py); rendering places
the files and says what they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bundler.manifest import Config
from bundler.models.artifacts import ModelArtifacts
from bundler.models.cache import Cache
from bundler.models.exports import ERROR, Export
from bundler.runtimes import NpmSet, Runtimes
from bundler.targets import TargetOutput
from bundler.tfjs_runtime.build import Request


@dataclass(frozen=True)
class ExportReport:
    """An export target's part of the report: each model's file and its facts."""

    kind: str
    models: Mapping[str, Mapping[str, Any]]  # model name → file, bytes, facts
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """`<kind>`: where its files are, at the report's top level."""
        return {self.kind: {"root": self.kind}}

    def model_fields(self, name: str) -> dict[str, Any]:
        """`<kind>`: the model's file, its size and facts, in the model's entry."""
        return {self.kind: dict(self.models[name])}


class ExportTarget:
    """A target whose files the model stage exports; subclasses give `name` and `exporter`."""

    name: str

    def shard_budget(self, config: Config) -> None:
        """None: it ships no tfjs shards."""
        return None

    def tfjs_version(self, config: Config) -> None:
        """None: no tfjs."""
        return None

    def runtime_request(self, config: Config) -> Request | None:
        """None: it ships no tfjs runtime."""
        return None

    def runtimes(self, config: Config) -> Sequence[NpmSet]:
        """No npm packages."""
        return []

    def render(
        self,
        config: Config,
        models: Sequence[ModelArtifacts],
        runtimes: Runtimes,
        exports: Mapping[str, Export],
        store: Cache,
    ) -> TargetOutput:
        """Each model's exported files in a folder named by their hash."""
        files: dict[str, bytes] = {}
        described: dict[str, dict[str, Any]] = {}
        for model in config.models:
            made = exports[model.name]
            folder = _folder(self.name, model.name, made.hash)
            files.update({f"{folder}/{name}": data for name, data in made.files.items()})
            described[model.name] = {
                "files": [f"{folder}/{name}" for name in made.files],
                "bytes": made.bytes,
                **made.facts,
            }
        unverified = [
            f'model "{m.name}": not verified (verify = false): nothing checked that its '
            f"{self.name} file loads and predicts what the source model predicts"
            for m in config.models
            if described[m.name][ERROR] is None
        ]
        warnings = (*unverified, *self.warnings(config, described))
        return TargetOutput(files, ExportReport(self.name, described, warnings))

    def warnings(self, config: Config, described: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Lines for the report's warnings (none by default)."""
        return []


def _folder(kind: str, model: str, digest: str) -> str:
    return f"{kind}/{model}/{digest}"
