"""build(config) → Result: the whole pipeline, in the order it runs.

models (convert or reuse) → verify → gather the targets' npm runtimes → every target renders
its files in memory → emit writes them beside `out` and swaps them in → the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bundler import emit, runtimes, targets
from bundler.manifest import Config
from bundler.models import stage
from bundler.report import REPORT_FILE, ModelReport, Report, model_folder

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
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The report, plus this run's facts (not written to the bundle: they vary by run)."""
        run = {
            "converted": self.converted,
            "reused": self.reused,
            "written": self.written,
            "seconds": round(self.seconds, 3),
        }
        return {**self.report.to_json(), "build": run}


def build(config: Config, progress: Progress | None = None) -> Result:
    """Build every model of the manifest and write the bundle to `config.project.out`."""
    started = time.perf_counter()
    say = progress or (lambda text: log.info("%s", text))

    loaded = stage.load(config, say)
    warnings = stage.verify_all(config, loaded, say)
    models = stage.artifacts(config, loaded)

    chosen = targets.of(config)
    installed = runtimes.gather((npm for t in chosen for npm in t.runtimes(config, models)), say)
    outputs = {t.name: t.render(config, models, installed) for t in chosen}

    report = Report(
        targets=config.project.targets,
        models=tuple(ModelReport.of(config, m) for m in models),
        warnings=tuple(warnings),
        target_reports={name: output.report for name, output in outputs.items()},
    )
    files: dict[str, bytes] = {}
    for m in models:
        folder = model_folder(m.name, m.hash)
        files.update({f"{folder}/{name}": data for name, data in m.files.items()})
    for output in outputs.values():
        files.update(output.files)
    files[REPORT_FILE] = report.to_bytes()
    written = emit.write_tree(config.project.out, files)
    return Result(
        report=report,
        written=written,
        converted=loaded.converted,
        reused=loaded.reused,
        seconds=time.perf_counter() - started,
    )
