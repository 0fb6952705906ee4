"""build(config) → Result: the whole pipeline, in the order it runs.

fingerprint → (cache hit? reuse : convert → quantize + shard → cache) → verify in tfjs
→ gather every output file in memory → write them beside `out` and swap in → report.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler import __version__, emit, manifest
from bundler.errors import ModelError
from bundler.manifest import Config, ModelConfig
from bundler.models import cache, pack
from bundler.models.cache import Cache, Entry
from bundler.models.convert import Converted
from bundler.models.verify import Check, verify

log = logging.getLogger(__name__)

REPORT_FILE = "bundle-report.json"
MODELS_DIR = "models"
HASH_LENGTH = 8
# Unquantized weights should match TensorFlow to rounding; more means something is wrong.
FLOAT_TOLERANCE = 1e-3


@dataclass
class Result:
    """What a build did: the report it wrote, and what it did to get there."""

    report: dict[str, Any]
    written: bool
    converted: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The report, plus this run's facts (not written to the bundle: they vary by run)."""
        run = {
            "converted": self.converted,
            "reused": self.reused,
            "written": self.written,
            "seconds": round(self.seconds, 3),
        }
        return {**self.report, "build": run}


Progress = Callable[[str], None]


def build(config: Config, progress: Progress | None = None) -> Result:
    """Build every model of the manifest and write the bundle to `config.project.out`."""
    started = time.perf_counter()
    say = progress or (lambda text: log.info("%s", text))
    store = Cache(config.project.cache_dir)
    result = Result(report={}, written=False)
    entries: dict[str, Entry] = {}
    # One conversion serves every model of this build with the same source and format:
    # quantization and sharding come after it.
    conversions: dict[tuple[Path, str], Converted] = {}
    for model in config.models:
        entries[model.name] = _artifacts(config, model, store, say, result, conversions)

    warnings = _verify_all(config, entries, say)
    files: dict[str, bytes] = {}
    model_reports = []
    for model in config.models:
        entry = entries[model.name]
        folder = f"{MODELS_DIR}/{model.name}/{entry.meta['hash']}"
        for name in entry.files:
            files[f"{folder}/{name}"] = entry.read(name)
        model_reports.append(_model_report(config, model, entry, folder))
    result.report = {
        "bundler_version": __version__,
        "targets": list(config.project.targets),
        "models": model_reports,
        "warnings": warnings,
    }
    if "wechat" in config.project.targets:
        from bundler.targets.wechat import target as wechat

        built = wechat.build(config, [(m, entries[m.name]) for m in config.models], say)
        files.update(built.files)
        result.report["packages"] = built.packages
        for report in model_reports:
            report["delivery"] = built.delivery[report["name"]]
    if "web" in config.project.targets:
        from bundler.targets.web import target as web

        site = web.build(config, [(m, entries[m.name]) for m in config.models], say)
        files.update(site.files)
        result.report["web"] = site.report
    files[REPORT_FILE] = (json.dumps(result.report, indent=2) + "\n").encode()
    result.written = emit.write_tree(config.project.out, files)
    result.seconds = time.perf_counter() - started
    return result


def _artifacts(
    config: Config,
    model: ModelConfig,
    store: Cache,
    say: Progress,
    result: Result,
    conversions: dict[tuple[Path, str], Converted],
) -> Entry:
    """The model's cached artifacts, converting it first when its fingerprint is new."""
    cap = config.shard_cap(model)
    quality = config.project.brotli_quality
    key = cache.fingerprint(model, {"shard_cap": cap, "brotli_quality": quality})
    entry = store.get(key)
    if entry is not None:
        result.reused.append(model.name)
        return entry
    say(
        f"converting {model.name} ({model.input.kind} → {model.format}, "
        f"quantize {_quantize_label(model)})"
    )
    from bundler.models.convert import (
        convert,  # imports nothing heavy itself; TensorFlow loads lazily
    )

    converted = conversions.get((model.source, model.format))
    if converted is None:
        try:
            converted = convert(model, verify=True)
        except ModelError as err:
            if str(err).startswith(f'model "{model.name}"'):
                raise
            raise ModelError(f'model "{model.name}": {err}') from err
        conversions[(model.source, model.format)] = converted
    files, packed = pack.build_files(converted, model.quantize, cap, quality)
    meta = {
        "hash": key[:HASH_LENGTH],
        "params": _params(converted),
        "source_bytes": cache.source_bytes(model),
        "weight_bytes": packed.weight_bytes,
        "brotli_bytes": sum(len(files[name + pack.BROTLI_SUFFIX]) for name, _ in packed.shards),
        "shards": len(packed.shards),
        "errors": {},
    }
    reference = list(converted.reference) if converted.reference is not None else []
    entry = store.put(key, files, meta, list(converted.inputs), reference)
    result.converted.append(model.name)
    return entry


def _params(converted: Any) -> int:
    from bundler.models.weights import param_count

    return param_count(converted.groups)


def _verify_all(config: Config, entries: dict[str, Entry], say: Progress) -> list[str]:
    """Verify each model in each runtime it ships with; record errors in its cache entry."""
    warnings = []
    checked = [m for m in config.models if m.verify and config.project.verify]
    for model in config.models:
        if model not in checked:
            warnings.append(
                f'model "{model.name}": not verified (verify = false): nothing checked that '
                "the tfjs runtime loads it and predicts what the source model predicts"
            )
    for version in config.tfjs_versions():
        todo = [m for m in checked if version not in entries[m.name].meta["errors"]]
        if not todo:
            continue
        say(f"verifying {', '.join(m.name for m in todo)} in tfjs {version}")
        checks = []
        for m in todo:
            entry = entries[m.name]
            inputs, reference = entry.verify_data()
            checks.append(
                Check(
                    name=m.name,
                    model_json=entry.folder / pack.MODEL_JSON,
                    format=m.format,
                    inputs=tuple(inputs),
                    reference=tuple(reference) if reference else None,
                    source_json=m.input.path if not reference else None,
                )
            )
        errors = verify(checks, version, progress=say)
        for m in todo:
            entries[m.name] = entries[m.name].with_errors({version: errors[m.name]})
    for m in checked:
        for version, error in entries[m.name].meta["errors"].items():
            if m.quantize.is_none and error > FLOAT_TOLERANCE:
                warnings.append(
                    f'model "{m.name}": unquantized, yet tfjs {version} differs from the source '
                    f"by up to {error:.3g}; check the model's ops"
                )
    return warnings


def _model_report(config: Config, model: ModelConfig, entry: Entry, folder: str) -> dict[str, Any]:
    meta = entry.meta
    versions = config.tfjs_versions() if model.verify and config.project.verify else ()
    return {
        "name": model.name,
        "source": manifest.display_relative(model.input.path, config.root),
        "input_format": model.input.kind,
        "format": model.format,
        "quantize": model.quantize.label,
        "params": meta["params"],
        "source_bytes": meta["source_bytes"],
        "weight_bytes": meta["weight_bytes"],
        "brotli_bytes": meta["brotli_bytes"],
        "shards": meta["shards"],
        "hash": meta["hash"],
        "max_abs_error": {v: meta["errors"].get(v) for v in versions},
        "files": [f"{folder}/{name}" for name in entry.files],
    }


def _quantize_label(model: ModelConfig) -> str:
    label = model.quantize.label
    return label if isinstance(label, str) else json.dumps(label)
