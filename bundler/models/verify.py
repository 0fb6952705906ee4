"""Load the artifacts in the real tfjs runtime and measure them against the source model.

The reference is what TensorFlow predicted for the same inputs during conversion; for a
TensorFlow.js source (no TensorFlow involved) it is the source model.json itself, run in the
same runtime. The Node side lives beside this module (`verify_runner.cjs`, `verify_node.py`).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bundler.errors import VerifyError
from bundler.models.verify_node import NodeJob, NodeResult, run_in_tfjs
from bundler.runtimes import ensure_tfjs

_INSTALLING = threading.Lock()
# What tfjs says when a tensor does not fit an op (a shape, a rank, a size, a dtype): with
# made-up inputs, the inputs are the likely culprit; other failures keep their own message.
_INPUT_PROBLEM = re.compile(r"shape|rank|dtype|size|dimension|divisible|Error when checking", re.I)
# Every model with a free batch size also runs in batches of one row: tfjs-layers splits a batch
# past its batchSize (32 rows) and concatenates the parts, a path a batch of 2 never takes; a
# batch of one row takes it with the rows at hand. A row must predict the same in both runs, to
# float rounding.
BATCH_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Runtime:
    """A tfjs runtime to verify in: the npm package, or the very file a target ships."""

    version: str
    id: str  # what results are kept under in the cache entry
    label: str  # how messages name it
    code: bytes | None = None  # the file's bytes; None: the npm package
    fmt: str = ""  # "cjs" | "iife", with code

    @classmethod
    def stock(cls, version: str) -> Runtime:
        """@tensorflow/tfjs at `version`, from npm."""
        return cls(version, version, f"tfjs {version}")


@dataclass(frozen=True)
class Check:
    """One model to check: its artifacts, the inputs, and what it should predict."""

    name: str
    model_json: Path
    format: str
    inputs: tuple[tuple[str, np.ndarray[Any, Any]], ...]
    reference: tuple[np.ndarray[Any, Any], ...] | None  # None: run `source_json` for it
    source_json: Path | None = None
    other_batch: bool = False  # run again in batches of one row (the batch size is free)
    made_up: bool = True  # the inputs were made up from the model's shapes (not samples)
    chunk_rows: int = 0  # rows per predict call (0: all at once)
    one_row_batches: bool = False  # a layers model predicts in batches of one row only


@dataclass(frozen=True)
class Metrics:
    """How far a runtime's predictions are from the source model's, on the check's rows."""

    max_abs_error: float
    mean_abs_error: float
    # Where an output is a class vector ([rows, classes]): the share of rows whose arg-max
    # is the source's (the lowest over such outputs); None when no output is one.
    top1_agreement: float | None
    rows: int

    def to_json(self) -> dict[str, Any]:
        """As the cache entry keeps it."""
        return {
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "top1_agreement": self.top1_agreement,
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metrics:
        """Read back what `to_json` wrote."""
        return cls(
            float(data["max_abs_error"]),
            float(data["mean_abs_error"]),
            None if data["top1_agreement"] is None else float(data["top1_agreement"]),
            int(data["rows"]),
        )

    def worst(self, other: Metrics) -> Metrics:
        """The worse of two measurements, figure by figure."""
        tops = [t for t in (self.top1_agreement, other.top1_agreement) if t is not None]
        return Metrics(
            max(self.max_abs_error, other.max_abs_error),
            max(self.mean_abs_error, other.mean_abs_error),
            min(tops) if tops else None,
            max(self.rows, other.rows),
        )


def verify(
    checks: Sequence[Check],
    runtime: Runtime | str,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Metrics]:
    """Run every check in `runtime` (a version: the npm package); return model name → how
    far its predictions are from the source's.

    Raises VerifyError naming each model that does not load or run, and the op, layer or
    kernel the runtime lacks.
    """
    if not checks:
        return {}
    rt = Runtime.stock(runtime) if isinstance(runtime, str) else runtime
    lacking = [c for c in checks if c.reference is None]
    references = source_outputs(lacking, rt.version, progress)
    got = run(checks, rt, progress)
    return judge(
        [dataclasses.replace(c, reference=references.get(c.name, c.reference)) for c in checks],
        rt,
        got,
    )


def run(
    checks: Sequence[Check], rt: Runtime, progress: Callable[[str], None] | None = None
) -> list[NodeResult]:
    """What every check's model predicts in `rt`, in check order (no comparison yet)."""
    if rt.code is None:
        with _INSTALLING:
            ensure_tfjs(rt.version, log=progress)
    jobs = [
        NodeJob(
            c.name,
            c.model_json,
            c.format,
            c.inputs,
            c.other_batch,
            c.chunk_rows,
            c.one_row_batches,
        )
        for c in checks
    ]
    return run_in_tfjs(jobs, rt.version, rt.code, rt.fmt)


def judge(
    checks: Sequence[Check], rt: Runtime, results: Sequence[NodeResult]
) -> dict[str, Metrics]:
    """How far each check's predictions in `rt` (`run`'s results) are from its reference.

    Raises VerifyError naming each model that did not load or run, or whose rows predicted in
    batches of one differ from one batch.
    """
    version = rt.version
    errors: dict[str, Metrics] = {}
    problems = []
    for c, got in zip(checks, results, strict=True):
        if got.outputs is None:
            problems.append(_failure(c.name, got, rt, made_up=c.made_up))
            continue
        if got.batch_rows is not None and not got.batch_diff <= BATCH_TOLERANCE:
            problems.append(
                f'model "{c.name}": in {rt.label}, {got.batch_rows} row(s) predicted in batches '
                f"of one row give other values than in one batch (by up to {got.batch_diff:.3g})"
            )
            continue
        if c.reference is None:
            raise ValueError(f"check {c.name!r} has no reference to judge against")
        try:
            errors[c.name] = metrics(got.outputs, c.reference)
        except ValueError as err:
            problems.append(f'model "{c.name}": tfjs {version} {err}')
    if problems:
        noun = "model fails" if len(problems) == 1 else "models fail"
        raise VerifyError(
            f"{len(problems)} {noun} in the tfjs {version} runtime:", problems=tuple(problems)
        )
    return errors


def source_outputs(
    checks: Sequence[Check], version: str, progress: Callable[[str], None] | None = None
) -> dict[str, tuple[np.ndarray[Any, Any], ...]]:
    """Run each check's source model.json in stock tfjs `version` on the check's inputs: the
    reference of a TensorFlow.js source, which has no TensorFlow one.

    Raises VerifyError naming each source that does not load or run.
    """
    if not checks:
        return {}
    with _INSTALLING:  # runtimes verify in parallel; one npm install per folder at a time
        ensure_tfjs(version, log=progress)
    jobs = []
    for c in checks:
        if c.source_json is None:
            raise ValueError(f"check {c.name!r} has neither a reference nor a source")
        jobs.append(NodeJob(c.name, c.source_json, c.format, c.inputs, False, c.chunk_rows))
    found: dict[str, tuple[np.ndarray[Any, Any], ...]] = {}
    problems = []
    for c, result in zip(checks, run_in_tfjs(jobs, version), strict=True):
        if result.outputs is None:
            stock = Runtime.stock(version)
            what = "its source model.json"
            problems.append(_failure(c.name, result, stock, what=what, made_up=c.made_up))
        else:
            found[c.name] = result.outputs
    if problems:
        noun = "model fails" if len(problems) == 1 else "models fail"
        raise VerifyError(
            f"{len(problems)} {noun} in the tfjs {version} runtime:", problems=tuple(problems)
        )
    return found


def metrics(got: Sequence[np.ndarray[Any, Any]], want: Sequence[np.ndarray[Any, Any]]) -> Metrics:
    """How far `got` is from `want`, over all outputs; ValueError if they do not line up."""
    if len(got) != len(want):
        raise ValueError(f"gave {len(got)} outputs where the source model gives {len(want)}")
    worst = total = 0.0
    count = 0
    tops: list[float] = []
    rows = 0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if g.size != w.size:
            raise ValueError(
                f"gave output {i} of shape {list(g.shape)} where the source model gives "
                f"{list(w.shape)}"
            )
        g = g.reshape(w.shape)
        rows = max(rows, int(w.shape[0]) if w.ndim else 1)
        if w.ndim == 2 and w.shape[1] >= 2:
            tops.append(float(np.mean(np.argmax(g, axis=1) == np.argmax(w, axis=1))))
        if not np.all(np.isfinite(g) == np.isfinite(w)):
            return Metrics(float("inf"), float("inf"), min(tops) if tops else None, rows)
        finite = np.isfinite(w)
        if finite.any():
            diff = np.abs(g[finite] - w[finite])
            worst = max(worst, float(np.max(diff)))
            total += float(np.sum(diff))
            count += int(diff.size)
    return Metrics(worst, total / count if count else 0.0, min(tops) if tops else None, rows)


def max_abs_error(
    got: Sequence[np.ndarray[Any, Any]], want: Sequence[np.ndarray[Any, Any]]
) -> float:
    """The largest absolute difference over all outputs; ValueError if they do not line up."""
    return metrics(got, want).max_abs_error


def _failure(
    name: str, result: NodeResult, rt: Runtime, what: str = "it", made_up: bool = False
) -> str:
    version = rt.version
    at = " in batches of one row" if result.stage == "batch" else ""
    if result.missing_kernel and rt.code is not None:
        return (
            f'model "{name}": {rt.label} lacks the kernel "{result.missing_kernel}", which '
            f"{what} runs{at}; the bundler left it out of the file: please report this bug"
        )
    if result.missing_kernel:
        return (
            f'model "{name}": tfjs {version} has no op "{result.missing_kernel}", which {what} '
            "uses; change the model to avoid that op, or use a tfjs_version that has it"
        )
    if result.unsupported_op:
        return (
            f'model "{name}": tfjs {version} has no op "{result.unsupported_op}", which {what} '
            "uses; change the model to avoid that op, or use a tfjs_version that has it"
        )
    if result.unsupported_layer:
        return (
            f'model "{name}": tfjs {version} has no layer "{result.unsupported_layer}", which '
            f'{what} uses; try format = "graph"'
        )
    stage = "load" if result.stage == "load" else "run"
    error = (result.error or "").rstrip(". ")
    if made_up and result.stage == "predict" and _INPUT_PROBLEM.search(error):
        return (
            f'model "{name}": {rt.label} rejected the inputs the build made up from the '
            f'model\'s input shapes ({error}); give real inputs with samples = "<file>.npz", '
            "or the shapes to make them with input_shape = [...]"
        )
    message = f'model "{name}": {what} does not {stage}{at} in tfjs {version}: {error}'
    if "Activation" in (result.error or "") and "not been implemented" in (result.error or ""):
        # The graph converter fuses a layer's activation into _FusedMatMul/_FusedConv2D, and
        # tfjs fuses only linear, relu, relu6, elu, prelu, leakyrelu and sigmoid.
        message += (
            "; the graph converter fused that activation into a Dense or Conv layer: use "
            'format = "layers" for this model'
        )
    return message
