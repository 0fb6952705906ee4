"""The large-model bench: cold builds of a 22 MB tfjs LayersModel, current code against a baseline.

A cold `bundler build` of a real TensorFlow.js LayersModel, side by side with the same build by
the bundler as it was at a baseline revision.

What runs (one command at a time, measured as bench/run.py measures, with its `measure()`):

- The model, prepared once into <work>/large/ (reused while the stamp matches; not timed):
  nsfwjs's InceptionV3 classifier (299x299x3 in, 5 classes, 22,360,869 weights stored as uint8,
  a Keras 2.2.4 LayersModel), from the npm package nsfwjs@4.4.0 fetched with `npm pack` and
  checked against its pinned sha512 integrity. The package ships the model as JavaScript
  (dist/models/inception_v3/model.min.js and six group1-shard*of6.min.js files holding the
  shards in base64): Node evaluates them and writes model/model.json (the package's object,
  plus "format": "layers-model" as tensorflowjs writes it) and the six shard files (22,360,869
  bytes, each checked against its pinned sha256). No nsfwjs release ships model.json files:
  2.x and 3.x ship no models at all, 4.x only the JavaScript form.
- The baseline (--baseline REV, default 6cdf53c: the bundler when the large-model goal was
  set): `git archive REV bundler templates | tar -x` into <work>/large/baseline-REV/ (once;
  re-extracted when its stamp names another commit). At that revision bundler/render.py reads
  its templates from `bundler/templates` when that folder exists (an installed wheel) and else
  from `../templates` beside the package (a checkout), which is how the extracted tree is laid
  out. The baseline runs as `env PYTHONPATH=<that folder> <venv>/bin/bundler ...`: the same
  Python and dependencies, and `import bundler` finds the old package before the editable
  install's finder (which sits at the end of sys.meta_path). A quick check prints
  `bundler.__file__` and the templates folder each way and stops the bench when the baseline
  would import the current code; both go into the results. Both packages are byte-compiled
  first (compileall, untimed), so neither build pays for compiling its modules. The current
  code is the working tree of bundler/ (uncommitted edits included: the results name HEAD and
  list them).
- The manifests in <work>/large/: that model, `format = "layers"`, quantize "none", the
  default targets (wechat and web), verified. bundle.toml for the current code,
  bundle-baseline.toml (its own out and cache_dir) for the baseline. Nothing is converted: the
  bundler reads the tfjs files, dequantizes the uint8 weights to float32 (quantize "none"),
  shards them to fit WeChat's 2 MB subpackages (43 shards, 89.4 MB; brotli and, for the web,
  gzip copies) and verifies the model in each target's tfjs runtime under Node, on two made-up
  299x299 rows, with stock tfjs running the source model.json as the reference.
- Timed, each repetition: a cold build (`bundler build --json`, no cache and no output folder)
  by the baseline and one by the current code, alternating which goes first (the baseline
  first in odd repetitions); the current code's no-op rebuild right after its cold build; last,
  a cold build by the current code with `verify = false` (bundle-noverify.toml; skip it with
  --verify-only).
- Goal: the current code's median cold build ≤ 0.5x the baseline's (MISSED otherwise), a ratio
  of figures taken in the same run, never against an old figure.

The breakdown (the current code's cold build) comes from the build's progress lines (seconds
since the build started): each phase runs to the next line. The verification lines come last
(together when the runtimes verify in parallel), so their phase runs to the end of the build
and also holds rendering the targets and writing the bundle; the no-verify build's time after
its last line, less one runtime's esbuild, estimates that render-and-write part, shown apart
(an estimate). The baseline's phases are shown too, from its own lines; where the runtimes
verify one after another (6cdf53c does), each runtime's phase runs to the next one's line and
the last also holds rendering and writing.

Others share the machine (2 cores). For each build: the 1-minute load average before and after
it, the CPU seconds of the build's processes (RUSAGE_CHILDREN: Python and the Node processes it
waited for) and of every other process meanwhile (the machine's busy CPU time from psutil, less
the build's and this bench's own). A build is unclean when other processes used more than 5%
of the machine's CPU time during it and more than 2 CPU s (a floor for short builds: the
kernel's writeback of the build's own output counts as another process); the run is unclean
when any timed cold build is, or when the load average was above 0.75 per CPU at the start
(the no-op rebuild, ~1 s, is flagged alone). Unclean figures are flagged in the table and the
results; the bench alone brings the load to 1-2 (two Node processes verify at once). The
bundler's source digest is recorded before and after each repetition, as bench/run.py does.

Results: a table on stdout and the key "large_model" of <work>/results.json (via bench/run.py's
merge_results); each build's stderr in <work>/large/logs/. Exit status 1 when a command fails,
else 0 (also when the goal is missed).

Usage:
    .venv/bin/python bench/large_model.py [--work bench/work] [--repeat N] [--verify-only]
        [--baseline REV]           (bench/run.py --large-only runs it)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
from run import (
    _PROGRESS,
    BENCH,
    BUNDLER,
    Measured,
    checked,
    measure,
    median,
    merge_results,
    say,
    source_digest,
    versions,
)

REPO = BENCH.parent
DEFAULT_BASELINE = "6cdf53c"  # the bundler when the goal was set (the session's start)
GOAL_RATIO = 0.5  # the current code's cold build ≤ 0.5x the baseline's
# A build is unclean when other processes used more than this share of the machine's CPU time
# during it, and more than CLEAN_OTHERS_FLOOR_S: the floor covers the background (~0.01 CPU s
# a second here) and the kernel writing back the build's own output (~200 MB; its CPU time
# counts as another process's), which alone pass 5% of a 9 s build.
CLEAN_OTHERS_SHARE = 0.05
CLEAN_OTHERS_FLOOR_S = 2.0
PACKAGE = "nsfwjs"
VERSION = "4.4.0"
INTEGRITY = (  # npm's dist.integrity of the tarball
    "sha512-krC1fgeTLXtZwgdpKJ0jm7hqv0gTSRQQRL+FhOaxaJ9Wj92t42BO3c"
    "sO2odwgTAgZgf2RvkwPtp0R8Aa7dc+MA=="
)
MODEL_DIR = "package/dist/models/inception_v3"  # inside the npm tarball
# The shards as the package's JavaScript holds them (base64-decoded), by manifest path.
SHARDS = {
    "group1-shard1of6": "7a3a4c075cfcaa7f0b095f55b2ba54a288c2f770e504c8537394efda9545994b",
    "group1-shard2of6": "8826da12bda0db9415aef0e6a8d1f178a0d950deab28c4e79b9da994748702a4",
    "group1-shard3of6": "4557a96cf87ceb8df6c9647b647ac9843251a4455457cb40f35c02250a63e51c",
    "group1-shard4of6": "399b99397ccd64351b59f04cdabe30000a15494c82f75c1e2ccb41c9b6338b7d",
    "group1-shard5of6": "994515b0f73407d71740301e9877511b086609dbdc7ead1b31bcb82b3397ae74",
    "group1-shard6of6": "cfb856c9d8fcefacca87b6063ed4949adf69f0372407d6edca8cec0c1694a28b",
}
MODEL_NAME = "nsfw_inception_v3"
PREPARE_VERSION = 1  # bump when what prepare() writes changes

# Evaluates the package's UMD files (each exports one value) and writes model.json and the shards.
_EXTRACT_JS = r"""
const fs = require('fs');
const path = require('path');
const [src, out] = process.argv.slice(1);
const model = require(path.join(src, 'model.min.js'));
const doc = { ...model, format: 'layers-model' };
fs.mkdirSync(out, { recursive: true });
for (const group of doc.weightsManifest) {
  for (const p of group.paths) {
    const b64 = require(path.join(src, p + '.min.js'));
    fs.writeFileSync(path.join(out, p), Buffer.from(b64, 'base64'));
  }
}
fs.writeFileSync(path.join(out, 'model.json'), JSON.stringify(doc));
"""


# --- preparing the model --------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _stamp() -> dict[str, Any]:
    return {
        "prepare_version": PREPARE_VERSION,
        "package": f"{PACKAGE}@{VERSION}",
        "integrity": INTEGRITY,
        "model_dir": MODEL_DIR,
    }


def prepare(large: Path) -> Path:
    """The model in <large>/model/ (model.json and six shards); fetched and written once."""
    model = large / "model"
    stamp_file = large / "prepared.json"
    try:
        if (
            json.loads(stamp_file.read_text(encoding="utf-8")) == _stamp()
            and (model / "model.json").is_file()
            and all(_sha256(model / name) == digest for name, digest in SHARDS.items())
        ):
            say(f"model: {model} (prepared before; {PACKAGE}@{VERSION})")
            return model / "model.json"
    except (OSError, ValueError):
        pass
    say(f"preparing {PACKAGE}@{VERSION}'s InceptionV3 in {model} (npm pack; not timed) ...")
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        sys.exit("large_model: needs node and npm on PATH")
    tmp = large / "npm"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = f"{PACKAGE}@{VERSION}"
    done = subprocess.run(
        [npm, "pack", spec, "--pack-destination", str(tmp), "--silent"],
        capture_output=True,
        text=True,
        check=False,
    )
    tarball = tmp / f"{PACKAGE}-{VERSION}.tgz"
    if done.returncode != 0 or not tarball.is_file():
        sys.exit(f"large_model: npm pack {spec} failed:\n{done.stderr.strip()}")
    if _integrity(tarball) != INTEGRITY:
        sys.exit(f"large_model: {tarball} does not match the pinned integrity {INTEGRITY}")
    src = tmp / "src"
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(MODEL_DIR)]
        tar.extractall(src, members=members, filter="data")
    shutil.rmtree(model, ignore_errors=True)
    subprocess.run([node, "-e", _EXTRACT_JS, str(src / MODEL_DIR), str(model)], check=True)
    for name, digest in SHARDS.items():
        if _sha256(model / name) != digest:
            sys.exit(f"large_model: {model / name} is not the shard the package held (sha256)")
    shutil.rmtree(tmp)
    stamp_file.write_text(json.dumps(_stamp(), indent=1) + "\n", encoding="utf-8")
    return model / "model.json"


def write_manifest(path: Path, model_json: Path, out: str, cache: str, verify: bool) -> None:
    source = os.path.relpath(model_json, path.parent)
    lines = [
        "# Written by bench/large_model.py; see its docstring.",
        "[project]",
        f'name = "bench-large-{path.stem}"',
        f"out = {json.dumps(out)}",
        f"cache_dir = {json.dumps(cache)}",
        f"verify = {'true' if verify else 'false'}",
        "",
        "[[models]]",
        f"name = {json.dumps(MODEL_NAME)}",
        f"source = {json.dumps(source)}",
        'format = "layers"',
        'quantize = "none"',
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


# --- the baseline ---------------------------------------------------------------------------


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    """A read-only git command in the repository."""
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )


def baseline_tree(large: Path, rev: str) -> tuple[Path, str]:
    """<large>/baseline-<rev>/ holding bundler/ and templates/ as they were at `rev` (`git
    archive`, which leaves the repository alone); extracted once, again when its stamp names
    another commit. Returns the folder and the commit."""
    found = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.returncode != 0:
        sys.exit(f"large_model: --baseline {rev} is not a commit of {REPO}")
    commit = found.stdout.strip()
    folder = large / f"baseline-{rev.replace('/', '_')}"
    stamp = {"rev": rev, "commit": commit, "paths": ["bundler", "templates"]}
    try:
        if (
            json.loads((folder / "baseline.json").read_text(encoding="utf-8")) == stamp
            and (folder / "bundler" / "__init__.py").is_file()
            and (folder / "templates").is_dir()
        ):
            say(f"baseline: {folder} ({rev} = {commit[:12]}; extracted before)")
            return folder, commit
    except (OSError, ValueError):
        pass
    say(f"baseline: extracting {rev}'s bundler/ and templates/ into {folder} (git archive) ...")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(REPO), "archive", commit, "bundler", "templates"],
        stdout=subprocess.PIPE,
    )
    assert archive.stdout is not None
    untar = subprocess.run(["tar", "-x", "-C", str(partial)], stdin=archive.stdout, check=False)
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        sys.exit(f"large_model: git archive {commit} bundler templates | tar -x failed")
    (partial / "baseline.json").write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder, commit


# Run as the builds run (same Python, same environment, same working folder): which bundler
# package `import bundler` finds, and which templates folder its render module reads.
_WHERE = (
    "import json, bundler, bundler.render as r; "
    "print(json.dumps({'bundler_file': bundler.__file__, 'templates': str(r.TEMPLATES)}))"
)


def where(prefix: list[str], cwd: Path, expected: Path) -> dict[str, Any]:
    """Which bundler a command with `prefix` imports; stops the bench unless it is the
    package in `expected` and its templates folder holds templates."""
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _WHERE], capture_output=True, text=True, cwd=cwd
    )
    if done.returncode != 0:
        sys.exit(f"large_model: cannot import bundler with {prefix}:\n{done.stderr.strip()}")
    found: dict[str, Any] = json.loads(done.stdout)
    package = Path(found["bundler_file"]).resolve().parent
    templates = Path(found["templates"])
    if package != (expected / "bundler").resolve() or not any(templates.rglob("*.j2")):
        sys.exit(
            f"large_model: {' '.join(prefix) or 'the current code'} imports bundler from "
            f"{found['bundler_file']} with templates {templates}, not {expected / 'bundler'}"
        )
    return found


# --- measuring ------------------------------------------------------------------------------


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def build(
    manifest: Path, what: str, log: Path, prefix: list[str] | None = None
) -> tuple[Measured, dict[str, Any], dict[str, Any]]:
    """One `bundler build --json`: the measurement, the report, and what the build's processes
    and every other process used meanwhile (CPU seconds), with the load average."""
    busy = _busy_cpu_s()
    children, own = _cpu_s(resource.RUSAGE_CHILDREN), _cpu_s(resource.RUSAGE_SELF)
    m = measure([*(prefix or []), BUNDLER, "build", "--json", manifest], cwd=manifest.parent)
    # The build and every descendant it waited for (Node); os.wait4 reaps it, so it counts.
    cpu = _cpu_s(resource.RUSAGE_CHILDREN) - children
    bench_cpu = _cpu_s(resource.RUSAGE_SELF) - own  # this process: the RSS sampler thread
    others = max(0.0, _busy_cpu_s() - busy - cpu - bench_cpu)
    log.write_text(m.stderr, encoding="utf-8")
    checked(m, what)
    report: dict[str, Any] = json.loads(m.stdout)
    share = others / (m.wall_s * (os.cpu_count() or 1))
    stats = {
        "cpu_s": round(cpu, 2),
        "bench_cpu_s": round(bench_cpu, 2),
        "others_cpu_s": round(others, 2),
        "others_share": round(share, 4),
        "load1_before": m.load1,
        "load1_after": os.getloadavg()[0],
        "clean": share <= CLEAN_OTHERS_SHARE or others <= CLEAN_OTHERS_FLOOR_S,
    }
    say(
        f"  {what:30} {m.wall_s:7.2f} s {m.maxrss_mb:6.0f} MB  (CPU: build {cpu:.1f} s, other "
        f"processes {others:.1f} s; load {m.load1:.2f} before, {stats['load1_after']:.2f} "
        f"after){'' if stats['clean'] else '  UNCLEAN'}"
    )
    return m, report, stats


def progress_marks(stderr: str) -> list[tuple[float, str]]:
    """(seconds since the build started, text) of each progress line."""
    return [
        (float(found.group(1)), found.group(2))
        for line in stderr.splitlines()
        if (found := _PROGRESS.match(line))
    ]


def breakdown(
    m: Measured, report: dict[str, Any], render_s: float | None = None
) -> list[tuple[str, float]]:
    """Seconds per phase of a build, from its progress lines; the phases sum to the wall time.

    Each line's phase runs to the next line. The verification lines come last, together when
    the runtimes verify in parallel: one phase from the first of them to the end of the build,
    which also renders the targets and writes the bundle; `render_s` (the no-verify build's
    time after its last line) splits that part off, as an estimate.
    """
    build_s = float(report["build"]["seconds"])
    marks = progress_marks(m.stderr)
    steps = [("Python: process start, imports, manifest, exit", m.wall_s - build_s)]
    if marks:
        steps.append(("Python: fingerprint (before the first line)", marks[0][0]))
    verifying = [(at, text) for at, text in marks if text.startswith("verifying")]
    others = [(at, text) for at, text in marks if not text.startswith("verifying")]
    first_verify = verifying[0][0] if verifying else build_s
    for i, (at, text) in enumerate(others):
        end = others[i + 1][0] if i + 1 < len(others) else first_verify
        label = text
        if text.startswith("converting"):
            label = "Python: read, dequantize, shard, brotli, cache write"
        elif text.startswith("building the tfjs"):
            label = f"Node (esbuild): {text.removeprefix('building the ')}"
        elif text.startswith("running the source"):
            label = f"Node: {text}"
        steps.append((label, max(0.0, end - at)))
    if verifying:
        where = [text.rsplit("(", 1)[-1].rstrip(")") for _, text in verifying]
        parallel = verifying[-1][0] - first_verify < 1.0
        if parallel:  # one phase: the runtimes together
            spans = [
                (f"Node: verify in the {' + '.join(where)} runtimes (in parallel)", first_verify)
            ]
        else:  # one phase per runtime, each to the next one's line
            spans = [
                (f"Node: verify in the {w} runtime (one after another)", at)
                for w, (at, _) in zip(where, verifying, strict=True)
            ]
        for (label, at), nxt in zip(spans, [*(at for _, at in spans[1:]), None], strict=True):
            if nxt is not None:
                steps.append((label, max(0.0, nxt - at)))
            elif render_s is None:
                steps.append((f"{label}; Python: render, write", build_s - at))
            else:
                steps.append((label, max(0.0, build_s - at - render_s)))
                steps.append(
                    ("Python: render targets, write (est. from no-verify build)", render_s)
                )
    return steps


def render_estimate(m: Measured, report: dict[str, Any]) -> float:
    """Rendering the targets and writing the bundle, in a no-verify build: the time after its
    last line (the last runtime's esbuild, then rendering), less the line before's esbuild."""
    marks = progress_marks(m.stderr)
    if len(marks) < 2:
        return float("nan")
    esbuild = marks[-1][0] - marks[-2][0]
    return float(report["build"]["seconds"]) - marks[-1][0] - esbuild


def _plain(m: Measured, stats: dict[str, Any]) -> dict[str, Any]:
    data = asdict(m)
    data.pop("stdout")
    data.pop("stderr")
    return data | stats


def _entry(m: Measured, report: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "cold": _plain(m, stats),
        "progress": progress_marks(m.stderr),
        "build_s": report["build"]["seconds"],
        "model": model_facts(report),
    }


def model_facts(report: dict[str, Any]) -> dict[str, Any]:
    model = report["models"][0]
    keys = ("params", "source_bytes", "weight_bytes", "brotli_bytes", "shards", "max_abs_error")
    return {k: model.get(k) for k in (*keys, "verified_on")}


def remove_output(large: Path, out: str, cache: str) -> None:
    """Make the next build cold: no output folder, no cache."""
    shutil.rmtree(large / out, ignore_errors=True)
    shutil.rmtree(large / cache, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=BENCH / "work", help="work folder (default bench/work)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (default 1)")
    parser.add_argument(
        "--verify-only", action="store_true", help="skip the cold build with verify = false"
    )
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        metavar="REV",
        help=f"the revision whose bundler/ the current code is timed against "
        f"(default {DEFAULT_BASELINE})",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    work: Path = args.work.resolve()
    large = work / "large"
    logs = large / "logs"
    large.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    if os.environ.pop("PYTHONPATH", None) is not None:
        say("note: PYTHONPATH was set; the builds run without it (the baseline with its own)")
    model_json = prepare(large)
    base_dir, base_commit = baseline_tree(large, args.baseline)
    base_prefix = [shutil.which("env") or "/usr/bin/env", f"PYTHONPATH={base_dir}"]
    for package in (REPO / "bundler", base_dir / "bundler"):  # bytecode up to date for both
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    imports = {
        "current": where([], large, REPO),
        "baseline": where(base_prefix, large, base_dir),
    }
    for side, found in imports.items():
        say(f"{side}: bundler from {found['bundler_file']}, templates {found['templates']}")

    full, noverify = large / "bundle.toml", large / "bundle-noverify.toml"
    base_manifest = large / "bundle-baseline.toml"
    write_manifest(full, model_json, "dist", ".bundler-cache", verify=True)
    write_manifest(noverify, model_json, "dist-noverify", ".bundler-cache-noverify", verify=False)
    write_manifest(base_manifest, model_json, "dist-baseline", ".bundler-cache-baseline", True)
    label = f"baseline {args.baseline}"

    digest_before = source_digest()
    load_before = os.getloadavg()
    started = time.time()
    runs: list[dict[str, Any]] = []
    for rep in range(1, args.repeat + 1):
        order = ("baseline", "current") if rep % 2 == 1 else ("current", "baseline")
        say(f"repetition {rep}/{args.repeat} ({order[0]} first)")
        run: dict[str, Any] = {"repetition": rep, "first": order[0]}
        before = source_digest()
        for side in order:
            if side == "baseline":
                remove_output(large, "dist-baseline", ".bundler-cache-baseline")
                m, report, stats = build(
                    base_manifest, f"cold ({label})", logs / f"{rep}-cold-baseline.log", base_prefix
                )
                run["baseline"] = _entry(m, report, stats) | {"breakdown": breakdown(m, report)}
                continue
            remove_output(large, "dist", ".bundler-cache")
            cold, cold_report, stats = build(full, "cold (current)", logs / f"{rep}-cold.log")
            run["current"] = _entry(cold, cold_report, stats)
            again, again_report, again_stats = build(
                full, "no-op rebuild (current)", logs / f"{rep}-rebuild.log"
            )
            run["current"]["rebuild"] = _plain(again, again_stats)
            run["current"]["rebuild_build"] = again_report["build"]
        render_s = None
        if not args.verify_only:
            remove_output(large, "dist-noverify", ".bundler-cache-noverify")
            m, report, stats = build(
                noverify, "cold (current, verify = false)", logs / f"{rep}-cold-noverify.log"
            )
            render_s = render_estimate(m, report)
            run["noverify"] = _entry(m, report, stats) | {"render_write_s": render_s}
        run["current"]["breakdown"] = breakdown(cold, cold_report, render_s)
        run["bundler_source_changed"] = source_digest() != before
        if run["bundler_source_changed"]:
            say("  WARNING: bundler/ changed during this repetition (edited by someone else?)")
        runs.append(run)
    digest_after = source_digest()

    results = summarize(runs, args, base_commit, base_dir, imports, load_before)
    results["machine"] |= {
        "loadavg_after": os.getloadavg(),
        "bench_seconds": round(time.time() - started, 1),
    }
    results["versions"] = versions()
    results["bundler_source"] = {
        "before": digest_before,
        "after": digest_after,
        "changed_during_run": digest_before != digest_after,
    }
    path = merge_results(work, "large_model", results)
    print_table(results, runs[-1])
    print(f"\nwrote the key large_model of {path}; logs in {logs}")
    return 0


def summarize(
    runs: list[dict[str, Any]],
    args: argparse.Namespace,
    base_commit: str,
    base_dir: Path,
    imports: dict[str, dict[str, Any]],
    load_before: tuple[float, float, float],
) -> dict[str, Any]:
    def med(side: str, key: str, part: str = "cold") -> float:
        return median([r[side][part][key] for r in runs])

    cold_s, base_s = med("current", "wall_s"), med("baseline", "wall_s")
    ratio = cold_s / base_s
    cpus = os.cpu_count() or 1
    timed = [
        r[side]["cold"] for r in runs for side in ("current", "baseline", "noverify") if side in r
    ]
    unclean = [
        f"repetition {r['repetition']}, {side}: other processes used "
        f"{r[side]['cold']['others_cpu_s']:.1f} CPU s ({r[side]['cold']['others_share']:.1%})"
        for r in runs
        for side in ("current", "baseline", "noverify")
        if side in r and not r[side]["cold"]["clean"]
    ]
    if load_before[0] > 0.75 * cpus:
        unclean.insert(0, f"load average {load_before[0]:.2f} at the start on {cpus} CPUs")
    head = _git("rev-parse", "HEAD").stdout.strip()
    edits = _git("status", "--porcelain", "--", "bundler", "templates").stdout.splitlines()
    results: dict[str, Any] = {
        "package": {"name": PACKAGE, "version": VERSION, "integrity": INTEGRITY, "path": MODEL_DIR},
        "model": runs[-1]["current"]["model"],
        "baseline_model": runs[-1]["baseline"]["model"],
        "repeat": len(runs),
        "current": {"head": head, "uncommitted": edits, **imports["current"]},
        "baseline": {
            "rev": args.baseline,
            "commit": base_commit,
            "folder": str(base_dir),
            **imports["baseline"],
        },
        "cold_s": cold_s,
        "baseline_cold_s": base_s,
        "ratio": ratio,
        "cpu_s": med("current", "cpu_s"),
        "baseline_cpu_s": med("baseline", "cpu_s"),
        "rebuild_s": med("current", "wall_s", "rebuild"),
        "goals": [
            {
                "goal": f"cold build ≤ {GOAL_RATIO}x the baseline's ({args.baseline})",
                "value": ratio,
                "limit": GOAL_RATIO,
                "met": ratio <= GOAL_RATIO,
            }
        ],
        "clean": not unclean,
        "unclean": unclean,
        "others_cpu_s_max": max(t["others_cpu_s"] for t in timed),
        "runs": runs,
        "machine": {"cpus": cpus, "loadavg_before": load_before},
    }
    if not args.verify_only:
        results["noverify_cold_s"] = med("noverify", "wall_s")
        results["render_write_s"] = median([r["noverify"]["render_write_s"] for r in runs])
    return results


def print_table(results: dict[str, Any], last: dict[str, Any]) -> None:
    m = results["model"]
    base = results["baseline"]
    n = results["repeat"]
    print(
        f"\n{PACKAGE}@{VERSION} InceptionV3 (layers): {m['params']:,} weights, source "
        f"{m['source_bytes'] / 1e6:.1f} MB -> {m['shards']} shards, {m['weight_bytes'] / 1e6:.1f} "
        f"MB ({m['brotli_bytes'] / 1e6:.1f} MB brotli); verified on {m['verified_on']}"
    )
    b = results["baseline_model"]
    if (b["weight_bytes"], b["shards"]) != (m["weight_bytes"], m["shards"]):
        print(f"  note: the baseline wrote {b['shards']} shards, {b['weight_bytes']:,} bytes")
    print(
        f"current: the working tree on {results['current']['head'][:12]} "
        f"({len(results['current']['uncommitted'])} uncommitted files in bundler/, templates/)"
    )
    print(
        f"baseline: {base['rev']} = {base['commit'][:12]}, bundler from {base['bundler_file']}, "
        f"templates {base['templates']}"
    )
    print(f"\nmedian of {n} repetition{'s' if n > 1 else ''}, {os.cpu_count()} CPUs")
    print(f"{'build':34} {'wall s':>8} {'CPU s':>7} {'others':>7} {'load':>11}")
    rows = [
        ("cold, current", "current", "cold"),
        (f"cold, baseline {base['rev']}", "baseline", "cold"),
    ]
    rows.append(("no-op rebuild, current", "current", "rebuild"))
    if "noverify" in last:
        rows.append(("cold, current, verify = false", "noverify", "cold"))
    for name, side, part in rows:
        builds = [r[side][part] for r in results["runs"]]
        wall, cpu, others = (
            median([b[k] for b in builds]) for k in ("wall_s", "cpu_s", "others_cpu_s")
        )
        load = f"{last[side][part]['load1_before']:.2f}/{last[side][part]['load1_after']:.2f}"
        flag = "" if all(b["clean"] for b in builds) else "  UNCLEAN"
        print(f"{name:34} {wall:8.2f} {cpu:7.1f} {others:7.1f} {load:>11}{flag}")
    print(
        "  CPU s: the build's processes (Python and Node); others: every other process's CPU "
        "seconds meanwhile (near 0 on a quiet machine); load: 1-minute, before/after"
    )
    for label, side in (("current", "current"), (f"baseline {base['rev']}", "baseline")):
        print(f"\nthe last cold build ({label}), by phase, from its progress lines:")
        steps = last[side]["breakdown"]
        total = sum(s for _, s in steps)
        for name, seconds in steps:
            print(f"  {name:68} {seconds:7.2f} s {100 * seconds / total:5.1f}%")
        print(f"  {'total (wall)':68} {total:7.2f} s")
    print("\ngoals")
    for g in results["goals"]:
        mark = "met" if g["met"] else "MISSED"
        print(f"  [{mark:^6}] {g['goal']}: {g['value']:.3f}x")
    if results["unclean"]:
        print("\nUNCLEAN: other work shared the machine; absolute times are inflated:")
        for reason in results["unclean"]:
            print(f"  {reason}")
    if results["bundler_source"]["changed_during_run"]:
        print("  WARNING: bundler/ changed during the run (edited by someone else?)")


if __name__ == "__main__":
    sys.exit(main())
