"""Run converted models in the real @tensorflow/tfjs runtime under Node, one process per batch."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bundler.errors import ToolError

__all__ = ["NodeJob", "NodeResult", "ensure_tfjs", "node_cache_dir", "run_in_tfjs"]

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("verify_runner.cjs")
RUN_TIMEOUT_S = 600.0
INSTALL_TIMEOUT_S = 900.0
_STDERR_TAIL_LINES = 20
# Digits and dots with an optional pre-release suffix: the version lands in an npm command line.
_VERSION_RE = re.compile(r"^\d+(?:\.\d+){2}(?:-[0-9A-Za-z][0-9A-Za-z.]*)?$")
_PACKAGE_RE = re.compile(r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$")

_NO_NODE = (
    "node was not found on PATH: the bundler verifies models in the real tfjs runtime and "
    "needs Node.js 18 or newer; install it (https://nodejs.org), or set verify = false in "
    "bundle.toml to skip verification"
)
_NO_NPM = (
    "npm was not found on PATH: the bundler installs @tensorflow/tfjs with npm to verify "
    "models; install Node.js with npm (https://nodejs.org), or set verify = false in "
    "bundle.toml to skip verification"
)


@dataclass(frozen=True)
class NodeJob:
    """One model to load and run in tfjs."""

    id: str
    model_json: Path
    format: str  # "graph" | "layers"
    inputs: tuple[tuple[str, NDArray[Any]], ...]  # (input name, float32 or int32 array)


@dataclass(frozen=True)
class NodeResult:
    """What tfjs made of one NodeJob: its outputs, or where and why it failed."""

    id: str
    outputs: tuple[NDArray[np.float32], ...] | None
    error: str | None
    stage: str | None  # "load" | "predict" when failed
    unsupported_op: str | None
    unsupported_layer: str | None
    load_ms: float
    predict_ms: float

    @property
    def ok(self) -> bool:
        """True when the model loaded and ran."""
        return self.error is None


def node_cache_dir() -> Path:
    """Return the folder that holds installed tfjs runtimes."""
    explicit = os.environ.get("BUNDLER_NODE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "model-bundler" / "node"


def _installed_version(folder: Path, name: str = "@tensorflow/tfjs") -> str | None:
    pkg = folder / "node_modules" / name / "package.json"
    try:
        data = json.loads(pkg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) else None


def _run(
    cmd: list[str], cwd: Path | None, timeout: float, timeout_message: str
) -> subprocess.CompletedProcess[str]:
    """Run a tool, its output captured as text; ToolError when it cannot start or hangs."""
    logger.debug("running %s in %s", cmd, cwd or Path.cwd())
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise ToolError(timeout_message) from err
    except OSError as err:
        raise ToolError(f"cannot run {cmd[0]}: {err}") from err


def _tail(text: str, lines: int = _STDERR_TAIL_LINES) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tfjs(version: str, *, log: Callable[[str], None] | None = None) -> Path:
    """Install @tensorflow/tfjs@version on first use into node_cache_dir()/tfjs-<version>; return that dir."""  # noqa: E501
    if not _VERSION_RE.match(version):
        raise ToolError(
            f"tfjs version {version!r} is not a version number like 3.21.0; "
            "set tfjs_version in bundle.toml to an exact @tensorflow/tfjs release"
        )
    return ensure_packages(
        f"tfjs-{version}",
        {"@tensorflow/tfjs": version},
        purpose=f"@tensorflow/tfjs {version} for verification",
        log=log,
    )


def ensure_packages(
    folder: str,
    packages: dict[str, str],
    *,
    purpose: str,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Install npm `packages` (name → exact version) on first use into node_cache_dir()/folder."""
    for name, version in packages.items():
        if not _VERSION_RE.match(version) or not _PACKAGE_RE.match(name):
            raise ToolError(f"{name}@{version} is not an npm package name and exact version")
    cache = node_cache_dir()
    target = cache / folder
    if _all_installed(target, packages):
        return target

    if shutil.which("node") is None:
        raise ToolError(_NO_NODE)
    npm = shutil.which("npm")
    if npm is None:
        raise ToolError(_NO_NPM)

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ToolError(f"cannot create the npm cache folder {cache}: {err}") from err
    with _locked(cache / f".{folder}.lock"):
        # Another build may have finished the install while we waited for the lock.
        if _all_installed(target, packages):
            return target
        message = f"installing {purpose} (first use) ..."
        logger.info(message)
        if log is not None:
            log(message)
        _install(npm, folder, packages, cache, target)
    logger.info("installed %s in %s", purpose, target)
    return target


def _all_installed(folder: Path, packages: dict[str, str]) -> bool:
    return all(_installed_version(folder, name) == v for name, v in packages.items())


def _install(npm: str, folder: str, packages: dict[str, str], cache: Path, target: Path) -> None:
    # Install beside the target and rename into place, so a build never sees half an install.
    wanted = " ".join(f"{name}@{version}" for name, version in packages.items())
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=cache))
    try:
        (staging / "package.json").write_text(
            json.dumps({"name": "model-bundler-tfjs-runtime", "version": "0.0.0", "private": True})
            + "\n",
            encoding="utf-8",
        )
        cmd = [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--no-save",
            "--loglevel=error",
            *(f"{name}@{version}" for name, version in packages.items()),
        ]
        proc = _run(
            cmd,
            staging,
            INSTALL_TIMEOUT_S,
            f"npm did not finish installing {wanted} "
            f"within {INSTALL_TIMEOUT_S:.0f} s; check the network or the npm registry",
        )
        if proc.returncode != 0:
            raise ToolError(
                f"npm could not install {wanted} "
                f"(exit status {proc.returncode}):\n{_tail(proc.stderr) or '(no output)'}"
            )
        for name, version in packages.items():
            got = _installed_version(staging, name)
            if got != version:
                raise ToolError(
                    f"npm install of {name}@{version} left version {got or 'nothing'} in {staging}"
                )
        if target.exists():
            # A stale or different install under our name: move it aside before replacing it.
            trash = Path(tempfile.mkdtemp(prefix=f".{folder}-old-", dir=cache))
            target.rename(trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _input_array(array: NDArray[Any]) -> tuple[NDArray[Any], str]:
    arr = np.asarray(array)
    if np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(arr, dtype="<f4"), "float32"
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return np.ascontiguousarray(arr, dtype="<i4"), "int32"
    raise TypeError(f"cannot feed an array of dtype {arr.dtype} to tfjs; use float32 or int32")


def _write_job(jobs: Sequence[NodeJob], tfjs_dir: Path, work: Path) -> Path:
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
            }
        )
    job_path = work / "job.json"
    job_path.write_text(json.dumps({"tfjs_dir": str(tfjs_dir), "models": models}), "utf-8")
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
            load_ms=0.0,
            predict_ms=0.0,
        )
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
        load_ms=float(record.get("load_ms", 0.0)),
        predict_ms=float(record.get("predict_ms", 0.0)),
    )


def run_in_tfjs(jobs: Sequence[NodeJob], tfjs_version: str) -> list[NodeResult]:
    """Run every job in one Node process with tfjs at that version."""
    if not jobs:
        return []
    ids = [job.id for job in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"job ids must be unique, got {ids}")
    node = shutil.which("node")
    if node is None:
        raise ToolError(_NO_NODE)
    tfjs_dir = ensure_tfjs(tfjs_version)

    with tempfile.TemporaryDirectory(prefix="bundler-verify-") as tmp:
        work = Path(tmp)
        job_path = _write_job(jobs, tfjs_dir, work)
        cmd = [node, str(RUNNER), str(job_path)]
        proc = _run(
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
                f"{_tail(proc.stderr) or '(no output)'}"
            )
        records = _parse_lines(proc.stdout)
        missing = [job_id for job_id in ids if job_id not in records]
        if missing:
            raise ToolError(
                f"the tfjs {tfjs_version} runner in Node gave no result for "
                f"{', '.join(missing)}:\n{_tail(proc.stderr) or '(no output)'}"
            )
        return [_to_result(job_id, records[job_id]) for job_id in ids]
