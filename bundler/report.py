"""The build's report: one typed value, serialized once into bundle-report.json and --json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bundler import __version__, manifest
from bundler.manifest import Config
from bundler.models.artifacts import ModelArtifacts
from bundler.targets import TargetReport

REPORT_FILE = "bundle-report.json"
MODELS_DIR = "models"


def model_folder(name: str, digest: str) -> str:
    """Where a model's files live in `out`: a folder named by its content hash."""
    return f"{MODELS_DIR}/{name}/{digest}"


@dataclass(frozen=True)
class ModelReport:
    """What the report says of one model."""

    name: str
    source: str  # relative to the manifest when inside its folder
    input_format: str
    format: str
    quantize: str | dict[str, list[str]]
    params: int
    source_bytes: int
    weight_bytes: int
    brotli_bytes: int
    shards: int
    hash: str
    max_abs_error: Mapping[str, float | None]  # tfjs version → error (None: not verified)
    files: tuple[str, ...]

    @classmethod
    def of(cls, config: Config, model: ModelArtifacts) -> ModelReport:
        """The report of one model of this build."""
        m = model.model
        verified = m.verify and config.project.verify
        versions = config.tfjs_versions() if verified else ()
        folder = model_folder(m.name, model.hash)
        return cls(
            name=m.name,
            source=manifest.display_relative(m.input.path, config.root),
            input_format=m.input.kind,
            format=m.format,
            quantize=m.quantize.label,
            params=model.params,
            source_bytes=model.source_bytes,
            weight_bytes=model.weight_bytes,
            brotli_bytes=model.brotli_bytes,
            shards=len(model.shards),
            hash=model.hash,
            max_abs_error={v: model.errors.get(v) for v in versions},
            files=tuple(f"{folder}/{name}" for name in model.files),
        )

    def to_json(self) -> dict[str, Any]:
        """The model's entry in bundle-report.json."""
        return {
            "name": self.name,
            "source": self.source,
            "input_format": self.input_format,
            "format": self.format,
            "quantize": self.quantize,
            "params": self.params,
            "source_bytes": self.source_bytes,
            "weight_bytes": self.weight_bytes,
            "brotli_bytes": self.brotli_bytes,
            "shards": self.shards,
            "hash": self.hash,
            "max_abs_error": dict(self.max_abs_error),
            "files": list(self.files),
        }


@dataclass(frozen=True)
class Report:
    """The whole report: the models, the warnings, and each target's part."""

    targets: tuple[str, ...]
    models: tuple[ModelReport, ...]
    warnings: tuple[str, ...]
    target_reports: Mapping[str, TargetReport] = field(default_factory=dict)
    # target → the tfjs runtime file built for it: version, bytes, kernels
    runtimes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bundler_version: str = __version__

    def to_json(self) -> dict[str, Any]:
        """The report as bundle-report.json holds it."""
        models = []
        for m in self.models:
            entry = m.to_json()
            for part in self.target_reports.values():
                entry.update(part.model_fields(m.name))
            models.append(entry)
        doc: dict[str, Any] = {
            "bundler_version": self.bundler_version,
            "targets": list(self.targets),
            "models": models,
            "warnings": list(self.warnings),
        }
        if self.runtimes:
            doc["runtimes"] = {name: dict(rt) for name, rt in self.runtimes.items()}
        for part in self.target_reports.values():
            doc.update(part.to_json())
        return doc

    def to_bytes(self) -> bytes:
        """bundle-report.json's bytes."""
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()
