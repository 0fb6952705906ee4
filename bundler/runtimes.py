"""The npm packages a build needs, installed on first use and gathered before any target renders.

Each set of packages (stock tfjs, the tools a tfjs runtime file is built with) is installed
once, pinned to exact versions, into its own folder of `node_cache_dir()`, beside it first and
renamed into place, under a lock so that concurrent builds share one install.
"""

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bundler.errors import ToolError

if TYPE_CHECKING:
    from bundler.tfjs_runtime.build import Runtime

logger = logging.getLogger(__name__)

INSTALL_TIMEOUT_S = 900.0
_STDERR_TAIL_LINES = 20
# Digits and dots with an optional pre-release suffix: the version lands in an npm command line.
_VERSION_RE = re.compile(r"^\d+(?:\.\d+){2}(?:-[0-9A-Za-z][0-9A-Za-z.]*)?$")
_PACKAGE_RE = re.compile(r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$")

SKIP_VERIFY = "set verify = false in bundle.toml to skip verification"
NO_NODE = (
    "node was not found on PATH: the bundler verifies models in the real tfjs runtime and "
    f"needs Node.js 18 or newer; install it (https://nodejs.org), or {SKIP_VERIFY}"
)


def _missing(tool: str, purpose: str, hint: str) -> str:
    """What to do when node or npm is missing for an install."""
    text = (
        f"{tool} was not found on PATH: the bundler installs {purpose} with npm on first use "
        "and needs Node.js 18 or newer with npm; install it (https://nodejs.org)"
    )
    return f"{text}, or {hint}" if hint else text


def run_tool(
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


def tail(text: str, lines: int = _STDERR_TAIL_LINES) -> str:
    """The last non-blank lines of a tool's output, for an error message."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


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


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tfjs(version: str, *, log: Callable[[str], None] | None = None) -> Path:
    """Install @tensorflow/tfjs@version on first use to verify models; return its folder."""
    npm = tfjs(version)
    return ensure_packages(
        npm.folder, dict(npm.packages), purpose=npm.purpose, log=log, hint=SKIP_VERIFY
    )


def ensure_packages(
    folder: str,
    packages: dict[str, str],
    *,
    purpose: str,
    log: Callable[[str], None] | None = None,
    hint: str = "",
) -> Path:
    """Install npm `packages` (name → exact version) on first use into node_cache_dir()/folder.

    `hint` is what else the user can do when node or npm is missing.
    """
    for name, version in packages.items():
        if not _VERSION_RE.match(version) or not _PACKAGE_RE.match(name):
            raise ToolError(f"{name}@{version} is not an npm package name and exact version")
    cache = node_cache_dir()
    target = cache / folder
    if _all_installed(target, packages):
        return target

    if shutil.which("node") is None:
        raise ToolError(_missing("node", purpose, hint))
    npm = shutil.which("npm")
    if npm is None:
        raise ToolError(_missing("npm", purpose, hint))

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
        proc = run_tool(
            cmd,
            staging,
            INSTALL_TIMEOUT_S,
            f"npm did not finish installing {wanted} "
            f"within {INSTALL_TIMEOUT_S:.0f} s; check the network or the npm registry",
        )
        if proc.returncode != 0:
            raise ToolError(
                f"npm could not install {wanted} "
                f"(exit status {proc.returncode}):\n{tail(proc.stderr) or '(no output)'}"
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


@dataclass(frozen=True)
class NpmSet:
    """npm packages (name → exact version) installed together into one cached folder."""

    folder: str
    packages: tuple[tuple[str, str], ...]  # (name, exact version)
    purpose: str  # what the user reads while it installs: "the tfjs 3.21.0 runtime ..."


def tfjs(version: str) -> NpmSet:
    """@tensorflow/tfjs at `version`: stock tfjs, which verifies models a target ships no
    runtime file for (web with tfjs_url) and runs TensorFlow.js source models."""
    if not _VERSION_RE.match(version):
        raise ToolError(
            f"tfjs version {version!r} is not a version number like 3.21.0; "
            "set tfjs_version in bundle.toml to an exact @tensorflow/tfjs release"
        )
    return NpmSet(
        f"tfjs-{version}",
        (("@tensorflow/tfjs", version),),
        f"@tensorflow/tfjs {version}",
    )


@dataclass(frozen=True)
class Runtimes:
    """The installed folder of every npm set a build asked for, and the runtimes built."""

    folders: Mapping[NpmSet, Path] = field(default_factory=dict)
    built: Mapping[str, Runtime] = field(default_factory=dict)  # target → its tfjs runtime

    def tfjs(self, target: str) -> Runtime:
        """The tfjs runtime file built for `target`."""
        try:
            return self.built[target]
        except KeyError:
            raise KeyError(f"no tfjs runtime was built for {target}") from None

    def folder(self, npm: NpmSet) -> Path:
        """Where `npm` is installed; its packages are under `node_modules/`."""
        try:
            return self.folders[npm]
        except KeyError:
            raise KeyError(f"{npm.folder} was not gathered before rendering") from None


def gather(sets: Iterable[NpmSet], log: Callable[[str], None] | None = None) -> Runtimes:
    """Install every set not installed yet; return where each one is."""
    folders: dict[NpmSet, Path] = {}
    for npm in dict.fromkeys(sets):
        folders[npm] = ensure_packages(npm.folder, dict(npm.packages), purpose=npm.purpose, log=log)
    return Runtimes(folders)
