"""build(config) → Result: the whole pipeline, in the order it runs.

models (convert to tfjs or reuse, when a target ships tfjs) → the export targets' files
(TFLite, Keras: converted and checked, or reused) → gather the targets' npm packages → build
each target's tfjs runtime for these models (or reuse it: then its npm packages are not even
installed) → verify every model in each runtime file →
every target renders its files in memory → emit writes them beside `out` and swaps them in →
the report.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bundler import emit, runtimes, targets
from bundler.manifest import Config
from bundler.models import cache, exports, stage
from bundler.models.artifacts import ModelArtifacts
from bundler.models.verify import Runtime as VerifyRuntime
from bundler.report import REPORT_FILE, ModelReport, Report, model_folder
from bundler.targets import Target
from bundler.tfjs_runtime import build as tfjs_build

__all__ = ["REPORT_FILE", "Progress", "Result", "build"]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class Result:
    """What a build did: the report it wrote, and what it did to get there."""

    report: Report
    written: bool
    converted: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)  # of the reused, those from the store
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The report, plus this run's facts (not written to the bundle: they vary by run)."""
        run = {
            "converted": self.converted,
            "reused": self.reused,
            "fetched": self.fetched,
            "written": self.written,
            "seconds": round(self.seconds, 3),
        }
        return {**self.report.to_json(), "build": run}


def build(config: Config, progress: Progress | None = None) -> Result:
    """Build every model of the manifest and write the bundle to `config.project.out`."""
    started = time.perf_counter()
    say = progress or (lambda text: log.info("%s", text))

    chosen = targets.of(config)
    store = cache.open_cache(config)
    try:
        return _build(config, say, chosen, store, started)
    finally:
        store.finish()  # what was made reaches the shared store even when the build fails


def _build(
    config: Config, say: Progress, chosen: tuple[Target, ...], store: cache.Cache, started: float
) -> Result:
    loaded = stage.load(config, say, store) if targets.ships_tfjs(config) else stage.Loaded(store)
    exported = exports.load(config, chosen, say, loaded)
    requests = {t.name: r for t in chosen if (r := t.runtime_request(config)) is not None}
    installed = runtimes.gather([n for t in chosen for n in t.runtimes(config)], say)
    built: dict[str, tfjs_build.Runtime] = {}
    if requests:
        docs = stage.docs(config, loaded)
        for name, request in requests.items():
            built[name] = tfjs_build.for_models(request, docs, store, say)
    installed = dataclasses.replace(installed, built=built)

    warnings: list[str] = []
    models: tuple[ModelArtifacts, ...] = ()
    if loaded.entries:
        checked = _verify_runtimes(config, chosen, installed)
        warnings = stage.verify_all(config, loaded, checked, say)
        models = stage.artifacts(config, loaded, checked)
    outputs = {
        t.name: t.render(config, models, installed, exported.get(t.name, {}), store) for t in chosen
    }
    store.finish()  # published, or said why not, before the report lists the warnings

    tfjs = {m.name: m for m in models}
    report = Report(
        targets=config.project.targets,
        models=tuple(
            ModelReport.of(
                config,
                m,
                tfjs.get(m.name),
                {kind: by_model[m.name] for kind, by_model in exported.items()},
            )
            for m in config.models
        ),
        warnings=(
            *store.warnings,
            *loaded.warnings,
            *warnings,
            *config.warnings(),
            *(w for output in outputs.values() for w in output.report.warnings),
        ),
        target_reports={name: output.report for name, output in outputs.items()},
        runtimes={name: rt.to_json() for name, rt in built.items()},
    )
    files: dict[str, bytes] = {}
    for m in models:
        folder = model_folder(m.name, m.hash)
        files.update({f"{folder}/{name}": data for name, data in m.files.items()})
    for output in outputs.values():
        files.update(output.files)
    files[REPORT_FILE] = report.to_bytes()
    written = emit.write_tree(config.project.out, files)
    for output in outputs.values():
        if output.project is not None:
            written = output.project.apply() or written
    return Result(
        report=report,
        written=written,
        converted=list(dict.fromkeys(loaded.converted)),
        reused=[n for n in dict.fromkeys(loaded.reused) if n not in loaded.converted],
        fetched=[n for n in dict.fromkeys(loaded.fetched) if n not in loaded.converted],
        seconds=time.perf_counter() - started,
    )


def _verify_runtimes(
    config: Config, chosen: tuple[Target, ...], installed: runtimes.Runtimes
) -> list[VerifyRuntime]:
    """The runtime each target ships, once each: the file built for it, or stock tfjs."""
    found: dict[str, VerifyRuntime] = {}
    for t in chosen:
        version = t.tfjs_version(config)
        if t.name in installed.built:
            rt = installed.tfjs(t.name)
            fmt, _ = tfjs_build.FLAVOURS[rt.spec.flavour]
            found.setdefault(rt.id, VerifyRuntime(rt.spec.version, rt.id, rt.label, rt.code, fmt))
        elif version is not None:
            found.setdefault(version, VerifyRuntime.stock(version))
    return list(found.values())
