"""Run converted models in the real @tensorflow/tfjs runtime under Node, a process per core."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bundler.errors import ToolError
from bundler.models import exports
from bundler.runtimes import NO_NODE, ensure_tfjs, run_tool, tail

__all__ = ["NodeJob", "NodeResult", "run_in_tfjs"]

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("verify_runner.cjs")
RUN_TIMEOUT_S = 600.0
# The rows run again in batches of one row: enough to take tfjs-layers' split-and-concat path
# (any batch past one row does, with batchSize 1) without doubling the time of many samples.
OTHER_BATCH_ROWS = 4
# A model's rows are split over Node processes only in parts of at least this many: each
# part loads the runtime and the model again.
MIN_PART_ROWS = 16
_SLOTS: threading.BoundedSemaphore | None = None  # Node processes at once, over all threads
_SLOTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class NodeJob:
    """One model to load and run in tfjs."""

    id: str
    model_json: Path
    format: str  # "graph" | "layers"
    inputs: tuple[tuple[str, NDArray[Any]], ...]  # (input name, float32 or int32 array)
    other_batch: bool = False  # run again in batches of one row (the batch size is free)
    chunk_rows: int = 0  # predict this many rows per call (0: all at once)
    one_row_batches: bool = False  # a layers model predicts with batchSize 1 (the split path)


@dataclass(frozen=True)
class NodeResult:
    """What tfjs made of one NodeJob: its outputs, or where and why it failed."""

    id: str
    outputs: tuple[NDArray[np.float32], ...] | None
    error: str | None
    stage: str | None  # "load" | "predict" when failed
    unsupported_op: str | None
    unsupported_layer: str | None
    missing_kernel: str | None
    load_ms: float
    predict_ms: float
    batch_rows: int | None = None  # the rows it ran again in batches of one, if any
    batch_diff: float = 0.0  # how far those rows are from the same rows of the first run

    @property
    def ok(self) -> bool:
        """True when the model loaded and ran."""
        return self.error is None


def _input_array(array: NDArray[Any]) -> tuple[NDArray[Any], str]:
    arr = np.asarray(array)
    if np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(arr, dtype="<f4"), "float32"
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr, dtype=np.uint8), "bool"
    if np.issubdtype(arr.dtype, np.integer):
        return np.ascontiguousarray(arr, dtype="<i4"), "int32"
    raise TypeError(
        f"cannot feed an array of dtype {arr.dtype} to tfjs; use float32, int32 or bool"
    )


def _write_job(jobs: Sequence[NodeJob], runtime: dict[str, str], work: Path) -> Path:
    models: list[dict[str, Any]] = []
    for i, job in enumerate(jobs):
        inputs: list[dict[str, Any]] = []
        for j, (name, array) in enumerate(job.inputs):
            arr, dtype = _input_array(array)
            file = work / f"m{i}-in{j}.bin"
            file.write_bytes(arr.tobytes())
            inputs.append(
                {"name": name, "shape": list(arr.shape), "dtype": dtype, "file": str(file)}
            )
        models.append(
            {
                "id": job.id,
                "model_json": str(Path(job.model_json).resolve()),
                "format": job.format,
                "inputs": inputs,
                "outputs_prefix": str(work / f"m{i}-out"),
                "other_batch": job.other_batch,
                "other_batch_rows": OTHER_BATCH_ROWS,
                "chunk_rows": job.chunk_rows,
                "one_row_batches": job.one_row_batches,
            }
        )
    job_path = work / "job.json"
    job_path.write_text(json.dumps({**runtime, "models": models}), "utf-8")
    return job_path


def _parse_lines(stdout: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            logger.debug("ignoring non-JSON line from the tfjs runner: %s", line)
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            found[record["id"]] = record
    return found


def _opt_str(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


def _to_result(job_id: str, record: dict[str, Any]) -> NodeResult:
    if not record.get("ok"):
        return NodeResult(
            id=job_id,
            outputs=None,
            error=str(record.get("error") or "unknown error"),
            stage=_opt_str(record, "stage"),
            unsupported_op=_opt_str(record, "unsupported_op"),
            unsupported_layer=_opt_str(record, "unsupported_layer"),
            missing_kernel=_opt_str(record, "missing_kernel"),
            load_ms=0.0,
            predict_ms=0.0,
        )
    batch = record.get("batch")
    outputs: list[NDArray[np.float32]] = []
    for out in record["outputs"]:
        shape = tuple(int(d) for d in out["shape"])
        data = np.fromfile(out["file"], dtype="<f4")
        outputs.append(data.reshape(shape).astype(np.float32, copy=False))
    return NodeResult(
        id=job_id,
        outputs=tuple(outputs),
        error=None,
        stage=None,
        unsupported_op=None,
        unsupported_layer=None,
        missing_kernel=None,
        load_ms=float(record.get("load_ms", 0.0)),
        predict_ms=float(record.get("predict_ms", 0.0)),
        batch_rows=int(batch["rows"]) if isinstance(batch, dict) else None,
        batch_diff=float(batch["max_diff"]) if isinstance(batch, dict) else 0.0,
    )


def run_in_tfjs(
    jobs: Sequence[NodeJob], tfjs_version: str, runtime_code: bytes | None = None, fmt: str = ""
) -> list[NodeResult]:
    """Run every job in Node, with tfjs at that version from npm, or in the file
    `runtime_code` (`fmt` "cjs": a module exporting `{tf}`; "iife": a script that sets `tf`).

    The work is spread over one Node process per core (`exports.jobs()`): models apart, and
    the rows of a model with many (the user's samples) in parts cut at its `chunk_rows`, so
    every predict call sees the rows it would see in one process and the outputs are the same
    bits. Processes of every thread share the cores (runtimes verify in parallel threads).
    """
    if not jobs:
        return []
    ids = [job.id for job in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"job ids must be unique, got {ids}")
    node = shutil.which("node")
    if node is None:
        raise ToolError(NO_NODE)
    plan = _plan(jobs, exports.jobs())

    def run(part: list[tuple[NodeJob, int]]) -> list[NodeResult]:
        with _slots():
            return _run_process(node, [job for job, _ in part], tfjs_version, runtime_code, fmt)

    if len(plan) == 1:
        done = [run(plan[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(plan)) as pool:
            done = list(pool.map(run, plan))
    parts: dict[str, dict[int, NodeResult]] = {}
    for part, results in zip(plan, done, strict=True):
        for (job, index), result in zip(part, results, strict=True):
            parts.setdefault(job.id, {})[index] = result
    return [_joined([parts[i][n] for n in sorted(parts[i])]) for i in ids]


def _plan(jobs: Sequence[NodeJob], processes: int) -> list[list[tuple[NodeJob, int]]]:
    """The jobs spread over at most `processes` Node processes: per process, (job or part of
    one, the part's index in row order)."""
    if processes <= 1:
        return [[(job, 0) for job in jobs]]
    plan: list[list[tuple[NodeJob, int]]] = [[] for _ in range(processes)]
    load = [0] * processes
    whole = []
    for job in jobs:
        rows, chunk = _rows(job), job.chunk_rows
        chunks = -(-rows // chunk) if chunk > 0 else 1
        count = min(processes, chunks, rows // MIN_PART_ROWS)
        if count < 2:
            whole.append(job)
            continue
        per = -(-chunks // count) * chunk  # rows per part, whole chunks
        for index, start in enumerate(range(0, rows, per)):
            part = dataclasses.replace(
                job,
                inputs=tuple((name, array[start : start + per]) for name, array in job.inputs),
                other_batch=job.other_batch and index == 0,
            )
            plan[index].append((part, index))
            load[index] += min(per, rows - start)
    for job in sorted(whole, key=_rows, reverse=True):
        least = load.index(min(load))
        plan[least].append((job, 0))
        load[least] += _rows(job)
    return [part for part in plan if part]


def _rows(job: NodeJob) -> int:
    return int(np.shape(job.inputs[0][1])[0]) if job.inputs and np.ndim(job.inputs[0][1]) else 1


def _joined(parts: Sequence[NodeResult]) -> NodeResult:
    """One job's result from its parts' (row order): the first failure, or the outputs joined."""
    failed = [r for r in parts if r.outputs is None]
    if failed or len(parts) == 1:
        return failed[0] if failed else parts[0]
    outputs = [r.outputs for r in parts if r.outputs is not None]
    return dataclasses.replace(
        parts[0],
        outputs=tuple(np.concatenate(column, axis=0) for column in zip(*outputs, strict=True)),
        load_ms=max(r.load_ms for r in parts),
        predict_ms=sum(r.predict_ms for r in parts),
    )


@contextlib.contextmanager
def _slots() -> Iterator[None]:
    """One of the cores' Node processes, for as long as one runs."""
    global _SLOTS
    with _SLOTS_LOCK:
        if _SLOTS is None:
            _SLOTS = threading.BoundedSemaphore(exports.jobs())
        slots = _SLOTS
    with slots:
        yield


def _run_process(
    node: str, jobs: Sequence[NodeJob], tfjs_version: str, runtime_code: bytes | None, fmt: str
) -> list[NodeResult]:
    """Run the jobs in one Node process (`node`: its path)."""
    ids = [job.id for job in jobs]
    with tempfile.TemporaryDirectory(prefix="bundler-verify-") as tmp:
        work = Path(tmp)
        if runtime_code is None:
            runtime = {"tfjs_dir": str(ensure_tfjs(tfjs_version))}
        else:
            file = work / "runtime.js"
            file.write_bytes(runtime_code)
            runtime = {"runtime_file": str(file), "runtime_format": fmt}
        job_path = _write_job(jobs, runtime, work)
        cmd = [node, str(RUNNER), str(job_path)]
        proc = run_tool(
            cmd,
            None,
            RUN_TIMEOUT_S,
            f"verifying {len(jobs)} model(s) in tfjs {tfjs_version} took longer than "
            f"{RUN_TIMEOUT_S:.0f} s; Node was stopped",
        )
        if proc.stderr:
            logger.debug("tfjs runner stderr:\n%s", proc.stderr)
        if proc.returncode != 0:
            raise ToolError(
                f"the tfjs {tfjs_version} runner in Node failed (exit status {proc.returncode}):\n"
                f"{tail(proc.stderr) or '(no output)'}"
            )
        records = _parse_lines(proc.stdout)
        missing = [job_id for job_id in ids if job_id not in records]
        if missing:
            raise ToolError(
                f"the tfjs {tfjs_version} runner in Node gave no result for "
                f"{', '.join(missing)}:\n{tail(proc.stderr) or '(no output)'}"
            )
        return [_to_result(job_id, records[job_id]) for job_id in ids]
