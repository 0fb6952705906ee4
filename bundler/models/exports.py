"""Export targets' files (TFLite, Keras), made from the source model and cached.

A tfjs target renders the model stage's tfjs artifacts. An export target needs the source
model and TensorFlow instead: its `Exporter` converts the model, then checks the file in the
runtime that will load it (TFLite's interpreter, Keras reloading the file) on the inputs the
tfjs check uses, against the source model's predictions. Both happen here, in the model
stage, and the result is cached by fingerprint like any conversion, so rendering stays pure
and a rebuild with nothing changed imports no TensorFlow.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bundler.errors import ModelError
from bundler.models import cache
from bundler.models.cache import Cache, Entry

if TYPE_CHECKING:
    from bundler.manifest import Config, ModelConfig
    from bundler.targets import Target

Progress = Callable[[str], None]
log = logging.getLogger(__name__)

# Set to a number to run that many exports at once (1: one after another, in this process).
JOBS_VARIABLE = "BUNDLER_JOBS"

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
    """Every export target's files for every model (target → model name → Export), through
    `done.store`; the names of the models exported, reused and fetched from the shared store
    go to `done`'s lists.

    The models to export run in worker processes, as many at once as the machine has cores
    (each conversion keeps one core busy, and TensorFlow's converters hold Python's lock, so
    threads would not help); one model alone runs in this process.
    """
    store = done.store
    entries: dict[tuple[str, str], Entry] = {}
    todo: list[_Job] = []
    for target in chosen:
        exporter = target.exporter(config)
        if exporter is None:
            continue
        for m in config.models:
            key = cache.fingerprint(m, {"export": exporter.kind, **exporter.options(config, m)})
            entry = store.get(key)
            (done.reused if entry is not None else done.converted).append(m.name)
            if entry is None:
                todo.append(_Job(target.name, m.name, key))
                continue
            entries[target.name, m.name] = entry
            if key in store.fetched:
                done.fetched.append(m.name)
                say(f"fetched {m.name} ({exporter.kind}) from the shared cache")
    for job, made in _run(config, todo, say):
        meta = {"facts": dict(made.facts)}
        entries[job.target, job.model] = store.put(job.key, made.files, meta, [], [])
    found: dict[str, dict[str, Export]] = {}
    for (target_name, model_name), entry in entries.items():
        files = {name: entry.read(name) for name in entry.files}
        # By key, as the cache's JSON holds them: a fresh export and a reused one read alike.
        facts = dict(sorted(entry.meta["facts"].items()))
        found.setdefault(target_name, {})[model_name] = Export(files, facts, entry.content_hash)
    return {
        t.name: {m.name: found[t.name][m.name] for m in config.models}
        for t in chosen
        if t.name in found
    }


class Done(Protocol):
    """The build's cache, and where it lists the models it converted and those it reused."""

    converted: list[str]
    reused: list[str]
    fetched: list[str]
    store: Cache


@dataclass(frozen=True)
class _Job:
    """One model to export for one target, and the cache key it goes under."""

    target: str
    model: str
    key: str


@dataclass(frozen=True)
class _Failure:
    """An export that failed in a worker: the ModelError's parts, and where it was raised."""

    message: str
    problems: tuple[str, ...]
    traceback: str
    bug: bool  # not a ModelError: a defect of the bundler


def _run(config: Config, todo: Sequence[_Job], say: Progress) -> Iterator[tuple[_Job, Exported]]:
    workers = min(len(todo), jobs())
    if workers < 2:
        for job in todo:
            yield job, _outcome(job, _work(config, job, say))
        return
    names = ", ".join(f"{job.model} ({job.target})" for job in todo)
    say(f"converting {len(todo)} files in {workers} processes: {names}")
    started = time.perf_counter()
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker
    )
    try:
        futures = {pool.submit(_work, config, job): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            made = _outcome(job, future.result())
            seconds = time.perf_counter() - started
            say(f"{job.target}: {job.model} converted and checked ({seconds:.1f}s)")
            yield job, made
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def jobs() -> int:
    """How many exports run at once: BUNDLER_JOBS, else the cores this process may use."""
    value = os.environ.get(JOBS_VARIABLE, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _quiet_worker() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")


def _work(config: Config, job: _Job, say: Progress | None = None) -> Exported | _Failure:
    """Export one model (in a worker process, or in this one)."""
    from bundler import targets

    exporter = targets.get(job.target).exporter(config)
    assert exporter is not None
    model = next(m for m in config.models if m.name == job.model)
    try:
        return exporter.export(config, model, say or (lambda text: None))
    except ModelError as err:
        return _Failure(err.message, err.problems, traceback.format_exc(), bug=False)
    except Exception as err:  # a defect: the traceback goes with it
        return _Failure(repr(err), (), traceback.format_exc(), bug=True)


def _outcome(job: _Job, result: Exported | _Failure) -> Exported:
    if isinstance(result, Exported):
        return result
    log.debug("exporting %s for %s failed:\n%s", job.model, job.target, result.traceback)
    if result.bug:
        raise RuntimeError(
            f"exporting {job.model} for {job.target} failed: {result.message}\n{result.traceback}"
        )
    raise ModelError(result.message, model=job.model, problems=result.problems)
