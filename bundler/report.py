"""The build's report: one typed value, serialized once into bundle-report.json and --json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bundler import __version__, manifest
from bundler.manifest import Config, ModelConfig
from bundler.models import cache, exports
from bundler.models.artifacts import ModelArtifacts
from bundler.models.exports import Export
from bundler.targets import TargetReport

REPORT_FILE = "bundle-report.json"
MODELS_DIR = "models"


def model_folder(name: str, digest: str) -> str:
    """Where a model's files live in `out`: a folder named by its content hash."""
    return f"{MODELS_DIR}/{name}/{digest}"


@dataclass(frozen=True)
class TfjsFacts:
    """What the report says of a model's tfjs artifacts (absent when no tfjs target)."""

    format: str
    params: int
    weight_bytes: int
    brotli_bytes: int
    shards: int
    hash: str
    files: tuple[str, ...]
    auto: Mapping[str, Any] | None = None  # quantize = "auto": what it chose


@dataclass(frozen=True)
class ModelReport:
    """What the report says of one model."""

    name: str
    source: str  # relative to the manifest when inside its folder
    input_format: str
    quantize: str | dict[str, list[str]]
    source_bytes: int
    # Each runtime the model ships to → its largest error against the source: tfjs versions,
    # then export targets ("tflite", "keras"); None: not verified.
    max_abs_error: Mapping[str, float | None]
    tfjs: TfjsFacts | None
    # The same runtimes → the mean absolute error, and the share of rows whose top class
    # agrees with the source's (None: no output is a class vector, or not verified).
    mean_abs_error: Mapping[str, float | None] = field(default_factory=dict)
    top1_agreement: Mapping[str, float | None] = field(default_factory=dict)
    verified_on: Mapping[str, Any] | None = None  # {"inputs": "samples" | "made up", "rows": n}

    @classmethod
    def of(
        cls,
        config: Config,
        model: ModelConfig,
        tfjs: ModelArtifacts | None,
        exported: Mapping[str, Export],
    ) -> ModelReport:
        """The report of one model of this build: its tfjs artifacts, and its exports by
        target."""
        verified = model.verify and config.project.verify
        versions = config.tfjs_versions() if verified and tfjs is not None else ()
        measured = {v: tfjs.metrics.get(v) for v in versions if tfjs is not None}
        errors: dict[str, float | None] = {
            v: m.max_abs_error if m else None for v, m in measured.items()
        }
        means: dict[str, float | None] = {
            v: m.mean_abs_error if m else None for v, m in measured.items()
        }
        tops = {v: m.top1_agreement if m else None for v, m in measured.items()}
        rows = [m.rows for m in measured.values() if m]
        for kind, e in exported.items():
            errors[kind] = e.facts[exports.ERROR]
            means[kind] = e.facts.get("mean_abs_error")
            tops[kind] = e.facts.get("top1_agreement")
            rows += [e.facts["rows"]] if e.facts.get("rows") else []
        on = None
        if rows:
            made_up = model.samples is None
            on = {"inputs": "made up" if made_up else "samples", "rows": max(rows)}
        facts = None
        if tfjs is not None:
            folder = model_folder(model.name, tfjs.hash)
            facts = TfjsFacts(
                format=model.format,
                params=tfjs.params,
                weight_bytes=tfjs.weight_bytes,
                brotli_bytes=tfjs.brotli_bytes,
                shards=len(tfjs.shards),
                hash=tfjs.hash,
                files=tuple(f"{folder}/{name}" for name in tfjs.files),
                auto=tfjs.auto,
            )
        return cls(
            name=model.name,
            source=manifest.display_relative(model.input.path, config.root),
            input_format=model.input.kind,
            quantize=model.quantize.label,
            source_bytes=cache.source_bytes(model) if tfjs is None else tfjs.source_bytes,
            max_abs_error=errors,
            tfjs=facts,
            mean_abs_error=means,
            top1_agreement=tops,
            verified_on=on,
        )

    def to_json(self) -> dict[str, Any]:
        """The model's entry in bundle-report.json (tfjs keys only when tfjs is built)."""
        doc: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "input_format": self.input_format,
        }
        if self.tfjs is not None:
            doc["format"] = self.tfjs.format
        doc["quantize"] = self.quantize
        if self.tfjs is not None and self.tfjs.auto is not None:
            doc["quantize_auto"] = dict(self.tfjs.auto)
        if self.tfjs is not None:
            doc["params"] = self.tfjs.params
        doc["source_bytes"] = self.source_bytes
        if self.tfjs is not None:
            t = self.tfjs
            doc.update(
                weight_bytes=t.weight_bytes,
                brotli_bytes=t.brotli_bytes,
                shards=t.shards,
                hash=t.hash,
            )
        doc["max_abs_error"] = dict(self.max_abs_error)
        doc["mean_abs_error"] = dict(self.mean_abs_error)
        doc["top1_agreement"] = dict(self.top1_agreement)
        if self.verified_on is not None:
            doc["verified_on"] = dict(self.verified_on)
        if self.tfjs is not None:
            doc["files"] = list(self.tfjs.files)
        return doc


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
