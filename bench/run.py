"""`make bench`: one `bundler build` against the equivalent `tensorflowjs_converter` commands.

What runs, side by side in one run (see bench/README.md for how to read the output):

- Models (prepared once by bench/prepare.py into bench/work/models/, not timed): MobileNetV2
  alpha 1.0 and 0.35 (224x224x3, random weights, calibrated BatchNorm, non-zero biases) and an
  MLP 32-64-10, all built with tf_keras and saved as `.h5` and as a SavedModel.
- Eight model builds, the manifest bench/work/bundle.toml (`targets = ["web"]`: 4 MiB shards,
  the converter's default, and one tfjs runtime to verify in):

    quantize "none":  MobileNetV2 1.0 .h5 → graph, MobileNetV2 1.0 SavedModel → graph,
                      MobileNetV2 0.35 .h5 → graph, MobileNetV2 0.35 SavedModel → graph,
                      MLP .h5 → layers
    quantize "uint8": MobileNetV2 0.35 .h5 → graph, MobileNetV2 0.35 SavedModel → graph,
                      MLP .h5 → layers

  Both sources of each MobileNetV2 cover the two graph paths (Keras → graph, SavedModel →
  graph); 1.0 gives multi-shard outputs (13.9 MB at float32), 0.35 the uint8 cases (uint8 of
  1.0 adds ~25 s of converter time and no new path); the MLP is the small layers model whose
  conversion costs little more than the converter's imports. Eight keeps `make bench` at N=3
  under ~10 minutes on 2 cores.
- converter: one `tensorflowjs_converter` process per model, as a user runs them today
  (`--input_format=keras --output_format=tfjs_graph_model` for .h5 → graph,
  `--input_format=tf_saved_model --output_format=tfjs_graph_model` for a SavedModel,
  `--input_format=keras` for layers, `--quantize_uint8=*` for uint8). Wall time is the sum over
  the commands, peak RSS the largest of them.
- bundler cold: `bundler build --json bundle.toml` with no cache and no output folder, which
  includes verifying every model in tfjs under Node; and the same manifest with
  `verify = false` in [project] (bundle-noverify.toml), so both are visible.
- bundler rebuild: the same command again, nothing changed (for both manifests).
- weight bytes: per model, the converter's shard bytes against the bundler's `weight_bytes`
  (bundle-report.json), and whether the concatenated shards are byte-identical; when they are
  not, which weights differ.

How it measures:
- Each command runs alone in a subprocess (2 cores: nothing in parallel), stdout and stderr to
  files. Wall time is perf_counter around the process. Peak RSS is the kernel's maxrss of the
  process and every descendant it waited for (os.wait4), i.e. the largest single process: for
  the bundler that is its Python process, not Node. The "tree" column samples the summed RSS of
  the process and its children every 50 ms with psutil (Python and Node at the same moment);
  "Node MB" the same for the children alone.
- One warm-up `bundler build` of the MLP alone runs first, untimed: it installs the tfjs
  runtime for verification if this machine has never done so (an npm install is not part of
  a build) and warms the OS file cache for TensorFlow's libraries, for both sides.
- Repetitions alternate the order (converter first, then bundler first, ...); medians are
  reported. `--repeat N` (default 3).
- Subprocesses get TF_CPP_MIN_LOG_LEVEL=2 and TFDF_DISABLE_WELCOME_MESSAGE=1. Every command's
  stderr is kept in bench/work/logs/ (the bundler's progress lines give the time breakdown).
- The tree is shared: a digest of the bundler package's files is taken before and after each
  repetition, and the output says so when someone edited bundler/ during the run (a changed
  fingerprint makes a "rebuild" convert again). The 1-minute load average is recorded too.

Results: a table on stdout and bench/work/results.json. The exit status is 0 even when a goal
is missed (the table marks it MISSED); 1 when a command itself fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the venv's bin: tensorflowjs_converter, bundler
CONVERTER = BIN / "tensorflowjs_converter"
BUNDLER = BIN / "bundler"
MIB = 1024 * 1024
SAMPLE_S = 0.05

# Goals, as ratios.
GOAL_COLD = 0.5  # cold build ≤ 0.5× the converter's total wall time
GOAL_REBUILD = 0.05  # rebuild ≤ 0.05× the cold build
GOAL_WEIGHTS = 1.0  # weight bytes = 1.00× the converter's


@dataclass(frozen=True)
class Case:
    """One model build: a bench name, the prepared net, its source, format and quantization."""

    name: str
    net: str
    source: str  # "h5" | "saved_model"
    format: str  # "graph" | "layers"
    quantize: str  # "none" | "uint8"

    def source_path(self, models: Path) -> Path:
        return models / (f"{self.net}.h5" if self.source == "h5" else f"{self.net}_savedmodel")


CASES = (
    Case("mnv2_100_h5", "mnv2_100", "h5", "graph", "none"),
    Case("mnv2_100_sm", "mnv2_100", "saved_model", "graph", "none"),
    Case("mnv2_035_h5", "mnv2_035", "h5", "graph", "none"),
    Case("mnv2_035_sm", "mnv2_035", "saved_model", "graph", "none"),
    Case("mlp_layers", "mlp", "h5", "layers", "none"),
    Case("mnv2_035_h5_u8", "mnv2_035", "h5", "graph", "uint8"),
    Case("mnv2_035_sm_u8", "mnv2_035", "saved_model", "graph", "uint8"),
    Case("mlp_layers_u8", "mlp", "h5", "layers", "uint8"),
)


# --- running one command --------------------------------------------------------------------


@dataclass
class Measured:
    """One process: its wall time, peak memory, exit status and output."""

    cmd: list[str]
    wall_s: float
    maxrss_mb: float  # kernel maxrss of the largest process in the tree (os.wait4)
    tree_mb: float  # largest sampled sum of RSS over the process tree
    children_mb: float  # largest sampled sum of RSS over its descendants alone (Node)
    load1: float  # the 1-minute load average when it started (others share the machine)
    returncode: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["TFDF_DISABLE_WELCOME_MESSAGE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.children_peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.done.is_set():
            try:
                children = root.children(recursive=True)
            except psutil.Error:
                children = []
            rss = [0, 0]  # the process, its descendants
            for i, p in enumerate([root, *children]):
                with contextlib.suppress(psutil.Error):
                    rss[min(i, 1)] += p.memory_info().rss
            self.peak = max(self.peak, rss[0] + rss[1])
            self.children_peak = max(self.children_peak, rss[1])
            self.done.wait(SAMPLE_S)


def measure(cmd: list[str | Path], cwd: Path | None = None) -> Measured:
    """Run `cmd` alone; return its wall time, peak RSS and output."""
    args = [str(c) for c in cmd]
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=_env(), cwd=cwd)
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        # wait4 gives the child's rusage: maxrss over it and the descendants it waited for.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            cmd=args,
            wall_s=wall,
            maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            tree_mb=sampler.peak / MIB,
            children_mb=sampler.children_peak / MIB,
            load1=load1,
            returncode=proc.returncode,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
        )


def checked(m: Measured, what: str) -> Measured:
    """Stop the benchmark when a command fails: there is nothing to compare then."""
    if m.returncode != 0:
        tail = "\n".join(m.stderr.strip().splitlines()[-25:])
        sys.stderr.write(
            f"\n{what} failed (exit status {m.returncode}):\n  {' '.join(m.cmd)}\n{tail}\n"
        )
        sys.exit(1)
    return m


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- setup ----------------------------------------------------------------------------------


def prepare_models(models: Path) -> dict[str, Any]:
    say(f"preparing models in {models} (reused when present; not timed) ...")
    m = checked(measure([sys.executable, BENCH / "prepare.py", models]), "preparing the models")
    for line in m.stdout.strip().splitlines():
        say(f"  {line}")
    stamp: dict[str, Any] = json.loads((models / "models.json").read_text(encoding="utf-8"))
    return stamp


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for these paths


def write_manifest(
    path: Path, cases: tuple[Case, ...], models: Path, out: str, cache: str, verify: bool
) -> None:
    lines = [
        "# Written by bench/run.py; see its docstring.",
        "[project]",
        f'name = "bench-{path.stem}"',
        f"out = {_toml_str(out)}",
        f"cache_dir = {_toml_str(cache)}",
        'targets = ["web"]',
        f"verify = {'true' if verify else 'false'}",
        "",
    ]
    for case in cases:
        source = os.path.relpath(case.source_path(models), path.parent)
        lines += [
            "[[models]]",
            f"name = {_toml_str(case.name)}",
            f"source = {_toml_str(source)}",
            f"format = {_toml_str(case.format)}",
            f"quantize = {_toml_str(case.quantize)}",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


@dataclass(frozen=True)
class Manifest:
    path: Path
    out: Path
    cache: Path

    def clean(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        shutil.rmtree(self.cache, ignore_errors=True)


def manifest(
    path: Path, cases: tuple[Case, ...], models: Path, out: str, cache: str, verify: bool
) -> Manifest:
    write_manifest(path, cases, models, out, cache, verify)
    return Manifest(path, path.parent / out, path.parent / cache)


# --- the converter --------------------------------------------------------------------------


def converter_cmd(case: Case, models: Path, out: Path) -> list[str | Path]:
    cmd: list[str | Path] = [CONVERTER]
    if case.source == "saved_model":
        cmd += ["--input_format=tf_saved_model", "--output_format=tfjs_graph_model"]
    elif case.format == "graph":
        cmd += ["--input_format=keras", "--output_format=tfjs_graph_model"]
    else:
        cmd += ["--input_format=keras"]  # → tfjs_layers_model
    if case.quantize == "uint8":
        cmd += ["--quantize_uint8=*"]
    return [*cmd, case.source_path(models), out]


# --- the bundler ----------------------------------------------------------------------------


def bundler_build(man: Manifest, what: str, log: Path) -> tuple[Measured, dict[str, Any]]:
    m = measure([BUNDLER, "build", "--json", man.path])
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(m.stderr, encoding="utf-8")
    checked(m, what)
    report: dict[str, Any] = json.loads(m.stdout)
    build = report["build"]
    say(
        f"  {what:32} {m.wall_s:6.2f} s {m.maxrss_mb:6.0f} MB  "
        f"(converted {len(build['converted'])}, reused {len(build['reused'])})"
    )
    return m, report


_PROGRESS = re.compile(r"^\s*(\d+(?:\.\d+)?)s (.+?)\s*$")


def breakdown(m: Measured, report: dict[str, Any]) -> dict[str, float]:
    """Where a cold build's time went, from its progress lines (elapsed since build start).

    Each model's share runs from its "converting" line to the next line: conversion, the
    reference prediction, quantizing, sharding, brotli and the cache write. The first one also
    imports TensorFlow.
    """
    marks = []
    for line in m.stderr.splitlines():
        found = _PROGRESS.match(line)
        if found:
            marks.append((float(found.group(1)), found.group(2)))
    build_s = float(report["build"]["seconds"])
    steps: dict[str, float] = {"process start, imports, manifest, exit": m.wall_s - build_s}
    if marks:
        steps["fingerprints, before the first conversion"] = marks[0][0]
    first = True
    for i, (at, text) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else build_s
        label = text
        conv = re.match(r"converting (\S+)", text)
        if conv:
            label = f"convert {conv.group(1)}" + (" (+ import TensorFlow)" if first else "")
            first = False
        elif text.startswith("verifying"):
            label = "verify in tfjs (Node), write the bundle"
        steps[label] = steps.get(label, 0.0) + max(0.0, end - at)
    return steps


def source_digest() -> str:
    """A digest of the bundler package's files, to notice edits during a run (shared tree)."""
    spec = importlib.util.find_spec("bundler")
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    root = Path(next(iter(spec.submodule_search_locations)))
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".cjs", ".js", ".json"):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


# --- weight bytes ---------------------------------------------------------------------------

_ITEMSIZE = {"float32": 4, "int32": 4, "bool": 1, "uint8": 1, "uint16": 2, "float16": 2}


def _shards(model_json: Path) -> tuple[bytes, list[dict[str, Any]]]:
    doc = json.loads(model_json.read_text(encoding="utf-8"))
    data = b""
    specs: list[dict[str, Any]] = []
    for group in doc["weightsManifest"]:
        data += b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        specs += group["weights"]
    return data, specs


def _by_name(data: bytes, specs: list[dict[str, Any]]) -> dict[str, tuple[bytes, dict[str, Any]]]:
    out = {}
    offset = 0
    for spec in specs:
        quant = spec.get("quantization")
        dtype = quant["dtype"] if quant else spec["dtype"]
        size = math.prod(spec["shape"]) * _ITEMSIZE[dtype]
        out[spec["name"]] = (data[offset : offset + size], spec)
        offset += size
    return out


def compare_weights(converter_json: Path, bundler_json: Path) -> dict[str, Any]:
    """Shard bytes of both outputs; when they differ, which weights differ and how."""
    conv, conv_specs = _shards(converter_json)
    ours, our_specs = _shards(bundler_json)
    result: dict[str, Any] = {
        "converter_bytes": len(conv),
        "bundler_bytes": len(ours),
        "identical": conv == ours,
    }
    if conv == ours:
        return result
    a, b = _by_name(conv, conv_specs), _by_name(ours, our_specs)
    result["same_names"] = set(a) == set(b)
    result["same_order"] = [s["name"] for s in conv_specs] == [s["name"] for s in our_specs]
    result["only_in_converter"] = sorted(set(a) - set(b))[:10]
    result["only_in_bundler"] = sorted(set(b) - set(a))[:10]
    differing = []
    worst = 0.0
    for name in sorted(set(a) & set(b)):
        (x, sx), (y, sy) = a[name], b[name]
        if x == y and sx.get("quantization") == sy.get("quantization"):
            continue
        differing.append(name)
        if (
            sx["dtype"] == sy["dtype"] == "float32"
            and "quantization" not in sx
            and len(x) == len(y)
        ):
            diff = np.abs(np.frombuffer(x, "<f4") - np.frombuffer(y, "<f4"))
            worst = max(worst, float(diff.max(initial=0.0)))
    result["differing_weights"] = len(differing)
    result["differing_examples"] = differing[:5]
    result["max_abs_float_diff"] = worst
    return result


# --- the run --------------------------------------------------------------------------------


def merge_results(work: Path, key: str, results: dict[str, Any]) -> Path:
    """Write `results` under `key` of work/results.json, keeping the other benches' keys."""
    path = work / "results.json"
    try:
        merged = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(merged, dict):
            merged = {}
    except (OSError, ValueError):
        merged = {}
    merged[key] = results
    path.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    return path


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def versions() -> dict[str, str]:
    found = {}
    for name in ("tensorflow", "tf-keras", "tensorflowjs", "model-bundler", "psutil"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    node = shutil.which("node")
    if node:
        found["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return found


def _strip_output(node: Any) -> None:
    """Drop captured stdout/stderr from nested results (they are in bench/work/logs/)."""
    if isinstance(node, dict):
        node.pop("stdout", None)
        node.pop("stderr", None)
        for value in node.values():
            _strip_output(value)


@dataclass(frozen=True)
class Setup:
    work: Path
    models: Path
    logs: Path
    full: Manifest
    noverify: Manifest


def converter_part(setup: Setup, run: dict[str, Any], rep: int) -> None:
    conv = {}
    for case in CASES:
        out = setup.work / "converter" / case.name
        shutil.rmtree(out, ignore_errors=True)
        m = measure(converter_cmd(case, setup.models, out))
        (setup.logs / f"{rep}-converter-{case.name}.log").write_text(m.stderr, encoding="utf-8")
        checked(m, f"converter for {case.name}")
        say(f"  converter {case.name:22} {m.wall_s:6.2f} s {m.maxrss_mb:6.0f} MB")
        conv[case.name] = asdict(m)
    run["converter"] = conv


def bundler_part(
    setup: Setup, run: dict[str, Any], rep: int, reports: dict[str, dict[str, Any]]
) -> None:
    for key, man in (("verify", setup.full), ("noverify", setup.noverify)):
        man.clean()
        cold, cold_report = bundler_build(
            man, f"bundler cold ({key})", setup.logs / f"{rep}-bundler-cold-{key}.log"
        )
        again, again_report = bundler_build(
            man, f"bundler rebuild ({key})", setup.logs / f"{rep}-bundler-rebuild-{key}.log"
        )
        hit = not again_report["build"]["converted"] and not again_report["build"]["written"]
        if not hit:
            say(
                f"  WARNING: the rebuild ({key}) converted or wrote something; see "
                f"{setup.logs / f'{rep}-bundler-rebuild-{key}.log'}"
            )
        run[f"bundler_{key}"] = {
            "cold": asdict(cold),
            "rebuild": asdict(again),
            "rebuild_cache_hit": hit,
            "breakdown": breakdown(cold, cold_report),
            "rebuild_build": again_report["build"],
        }
        reports[key] = cold_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--work", type=Path, default=BENCH / "work", help="work folder (default bench/work)"
    )
    parser.add_argument(
        "--watch-only", action="store_true", help="run only the watch benchmark (bench/watch.py)"
    )
    parser.add_argument(
        "--runtime-only",
        action="store_true",
        help="run only the runtime size benchmark (bench/runtime_size.py)",
    )
    parser.add_argument(
        "--wechat-only",
        action="store_true",
        help="run only the WeChat cache benchmark (bench/wechat_cache.py)",
    )
    parser.add_argument(
        "--tflite-only",
        action="store_true",
        help="run only the TFLite benchmark (bench/tflite.py)",
    )
    parser.add_argument(
        "--auto-only",
        action="store_true",
        help='run only the quantize = "auto" benchmark (bench/auto.py)',
    )
    parser.add_argument(
        "--shared-cache-only",
        action="store_true",
        help="run only the shared cache benchmark (bench/shared_cache.py)",
    )
    parser.add_argument(
        "--large-only",
        action="store_true",
        help="run only the large-model benchmark (bench/large_model.py)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    work: Path = args.work.resolve()
    if args.watch_only:
        return watch_bench(args.repeat, work)
    if args.wechat_only:
        return wechat_bench(args.repeat, work)
    if args.runtime_only:
        return runtime_bench(work)
    if args.tflite_only:
        return tflite_bench(args.repeat, work)
    if args.auto_only:
        return auto_bench(args.repeat, work)
    if args.shared_cache_only:
        return shared_cache_bench(args.repeat, work)
    if args.large_only:
        return large_bench(args.repeat, work)
    models = work / "models"
    logs = work / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    stamp = prepare_models(models)
    setup = Setup(
        work=work,
        models=models,
        logs=logs,
        full=manifest(work / "bundle.toml", CASES, models, "dist", ".bundler-cache", True),
        noverify=manifest(
            work / "bundle-noverify.toml",
            CASES,
            models,
            "dist-noverify",
            ".bundler-cache-noverify",
            False,
        ),
    )
    warm = manifest(
        work / "warmup" / "bundle.toml",
        tuple(c for c in CASES if c.name == "mlp_layers"),
        models,
        "dist",
        ".bundler-cache",
        True,
    )
    say("warm-up: one bundler build of the MLP (untimed; installs tfjs for Node on first use)")
    warm.clean()
    warm_m, _ = bundler_build(warm, "warm-up build", logs / "warmup.log")

    load_before = os.getloadavg()
    digest_before = source_digest()
    started = time.time()
    runs: list[dict[str, Any]] = []
    reports: dict[str, dict[str, Any]] = {}
    for rep in range(1, args.repeat + 1):
        converter_first = rep % 2 == 1
        first = "converter" if converter_first else "bundler"
        say(f"repetition {rep}/{args.repeat} ({first} first)")
        run: dict[str, Any] = {"repetition": rep, "converter_first": converter_first}
        before = source_digest()
        if converter_first:
            converter_part(setup, run, rep)
            bundler_part(setup, run, rep, reports)
        else:
            bundler_part(setup, run, rep, reports)
            converter_part(setup, run, rep)
        run["bundler_source_changed"] = source_digest() != before
        if run["bundler_source_changed"]:
            say("  WARNING: bundler/ changed during this repetition (edited by someone else?)")
        _strip_output(run)
        runs.append(run)
    digest_after = source_digest()

    results = summarize(runs, reports, work, stamp)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "bench_seconds": round(time.time() - started, 1),
        "warmup_build_s": round(warm_m.wall_s, 2),
    }
    results["versions"] = versions()
    results["bundler_source"] = {
        "before": digest_before,
        "after": digest_after,
        "changed_during_run": digest_before != digest_after,
    }
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print_table(results)
    print(f"\nwrote {work / 'results.json'}; logs in {logs}")
    watch_rc = watch_bench(args.repeat, work)
    return max(
        watch_rc,
        wechat_bench(args.repeat, work),
        runtime_bench(work),
        tflite_bench(args.repeat, work),
        auto_bench(args.repeat, work),
        shared_cache_bench(args.repeat, work),
        large_bench(args.repeat, work),
    )


# --- the watch benchmark --------------------------------------------------------------------


def watch_bench(repeat: int, work: Path) -> int:
    """bench/watch.py, after the tables above: save → new bundle with `bundler watch`, as a
    ratio to a cold build. Its own process (it loads TensorFlow); it adds a `watch` key to
    results.json."""
    sys.stdout.flush()
    cmd = [sys.executable, BENCH / "watch.py", "--repeat", str(repeat), "--work", work]
    return subprocess.run([str(c) for c in cmd], env=_env(), check=False).returncode


def wechat_bench(repeat: int, work: Path) -> int:
    """bench/wechat_cache.py, last: a 4 MB model loaded warm from the WeChat glue's file cache
    against the tfjsPlugin's localStorageIO route, in the wx simulator, as a ratio. Its own
    process; at least 5 rounds (each is a fraction of a second); adds a `wechat_cache` key to
    results.json."""
    sys.stdout.flush()
    rounds = max(repeat, 5)
    cmd = [sys.executable, BENCH / "wechat_cache.py", "--repeat", str(rounds), "--work", work]
    return subprocess.run([str(c) for c in cmd], env=_env(), check=False).returncode


def runtime_bench(work: Path) -> int:
    """bench/runtime_size.py: the tfjs runtime each bundle ships against stock tfjs, in bytes.
    Its own process; adds a `runtime` key to results.json."""
    sys.stdout.flush()
    cmd = [sys.executable, BENCH / "runtime_size.py", "--work", work]
    return subprocess.run([str(c) for c in cmd], env=_env(), check=False).returncode


def tflite_bench(repeat: int, work: Path) -> int:
    """bench/tflite.py: a `.tflite` build of the models (target tflite) against one TFLite
    converter call per model, as a ratio, with byte identity and errors. Its own process; adds
    a `tflite` key to results.json."""
    sys.stdout.flush()
    cmd = [sys.executable, BENCH / "tflite.py", "--repeat", str(repeat), "--work", work]
    return subprocess.run([str(c) for c in cmd], env=_env(), check=False).returncode


def auto_bench(repeat: int, work: Path) -> int:
    """bench/auto.py: `quantize = "auto"` (min_top1 = 0.99, 200 samples) on MobileNetV2 α0.35
    against a plain uint8 build, as a time ratio, with the bytes and top-1 agreement of none,
    uint8 and auto. Its own process; adds an `auto` key to results.json."""
    sys.stdout.flush()
    cmd = [sys.executable, BENCH / "auto.py", "--repeat", str(repeat), "--work", work]
    return subprocess.run([str(c) for c in cmd], env=_env(), check=False).returncode


def shared_cache_bench(repeat: int, work: Path) -> int:
    """bench/shared_cache.py: the eight models built in a second clean checkout against a
    warm shared cache (moto's S3 server on 127.0.0.1) as a ratio to the first checkout's cold
    build, with the two outputs compared byte for byte. Its own process; adds a `shared_cache`
    key to results.json."""
    sys.stdout.flush()
    cmd = [sys.executable, BENCH / "shared_cache.py", "--repeat", str(repeat), "--work", work]
    return subprocess.run([str(c) for c in cmd], env=_env(), check=False).returncode


def large_bench(repeat: int, work: Path) -> int:
    """bench/large_model.py: a cold build of nsfwjs's 22 MB InceptionV3 LayersModel (nothing to
    convert) against the same build by the bundler at a baseline revision (6cdf53c), as a time
    ratio, with the no-op rebuild and where the time goes. Its own process; adds a
    `large_model` key to results.json."""
    sys.stdout.flush()
    cmd = [sys.executable, BENCH / "large_model.py", "--repeat", str(repeat), "--work", work]
    return subprocess.run([str(c) for c in cmd], env=_env(), check=False).returncode


def summarize(
    runs: list[dict[str, Any]],
    reports: dict[str, dict[str, Any]],
    work: Path,
    stamp: dict[str, Any],
) -> dict[str, Any]:
    metrics = ("wall_s", "maxrss_mb", "tree_mb", "children_mb")

    def col(*path: str) -> list[float]:
        values = []
        for run in runs:
            node: Any = run
            for key in path:
                node = node[key]
            values.append(float(node))
        return values

    sides: dict[str, dict[str, float]] = {
        "converter": {
            "wall_s": median([sum(v["wall_s"] for v in r["converter"].values()) for r in runs]),
            **{
                m: median([max(v[m] for v in r["converter"].values()) for r in runs])
                for m in metrics[1:]
            },
        }
    }
    for key in ("verify", "noverify"):
        for phase in ("cold", "rebuild"):
            sides[f"bundler_{phase}_{key}"] = {
                m: median(col(f"bundler_{key}", phase, m)) for m in metrics
            }

    per_model = []
    report_models = {m["name"]: m for m in reports["verify"]["models"]}
    for case in CASES:
        ours = report_models[case.name]
        cmp = compare_weights(
            work / "converter" / case.name / "model.json",
            work / "dist" / Path(ours["files"][0]),
        )
        per_model.append(
            {
                **asdict(case),
                "converter_wall_s": median(col("converter", case.name, "wall_s")),
                "converter_maxrss_mb": median(col("converter", case.name, "maxrss_mb")),
                "bundler_weight_bytes": ours["weight_bytes"],
                "weights_ratio": ours["weight_bytes"] / cmp["converter_bytes"],
                "bundler_max_abs_error": ours["max_abs_error"],
                "shards": ours["shards"],
                **cmp,
            }
        )

    steps: dict[str, dict[str, list[float]]] = {}
    for key in ("verify", "noverify"):
        for run in runs:
            for label, seconds in run[f"bundler_{key}"]["breakdown"].items():
                steps.setdefault(label, {}).setdefault(key, []).append(seconds)
    cold = sides["bundler_cold_verify"]["wall_s"]
    cold_nv = sides["bundler_cold_noverify"]["wall_s"]
    conv = sides["converter"]["wall_s"]
    rebuild = sides["bundler_rebuild_verify"]["wall_s"]
    misses = sum(
        not run[f"bundler_{key}"]["rebuild_cache_hit"]
        for run in runs
        for key in ("verify", "noverify")
    )
    goals = [
        {
            "goal": f"cold build (verified) <= {GOAL_COLD}x converter wall time",
            "value": cold / conv,
            "met": cold / conv <= GOAL_COLD,
        },
        {
            "goal": f"cold build (verify = false) <= {GOAL_COLD}x converter wall time",
            "value": cold_nv / conv,
            "met": cold_nv / conv <= GOAL_COLD,
        },
        {
            "goal": f"rebuild, nothing changed <= {GOAL_REBUILD}x cold build",
            "value": rebuild / cold,
            "met": rebuild / cold <= GOAL_REBUILD and misses == 0,
            "note": (
                f"{misses} rebuild(s) were not cache hits"
                + (
                    ": bundler/ changed during the run, which changes fingerprints"
                    if any(run["bundler_source_changed"] for run in runs)
                    else ""
                )
            )
            if misses
            else "",
        },
        {
            "goal": "weight bytes = 1.00x converter's, every model",
            "value": max(abs(m["weights_ratio"] - 1) for m in per_model) + 1,
            "met": all(m["weights_ratio"] == GOAL_WEIGHTS for m in per_model),
            "note": f"{sum(not m['identical'] for m in per_model)} model(s) not byte-identical"
            if not all(m["identical"] for m in per_model)
            else "all byte-identical",
        },
        {
            "goal": "peak RSS, cold build (verified) vs converter (report only)",
            "value": sides["bundler_cold_verify"]["maxrss_mb"] / sides["converter"]["maxrss_mb"],
            "met": None,
        },
    ]
    return {
        "repeat": len(runs),
        "cases": [asdict(c) for c in CASES],
        "prepared": stamp,
        "median": sides,
        "per_model": per_model,
        "cold_breakdown_median_s": {
            label: {k: median(v) for k, v in by_key.items()} for label, by_key in steps.items()
        },
        "goals": goals,
        "runs": runs,
    }


def print_table(results: dict[str, Any]) -> None:
    med = results["median"]
    conv = med["converter"]
    n = results["repeat"]
    print(
        f"\nmodel bundler vs tensorflowjs_converter: {len(results['cases'])} models, "
        f"median of {n} run{'s' if n > 1 else ''}, {os.cpu_count()} CPUs\n"
    )
    header = (
        f"{'':42} {'wall s':>7} {'x conv':>7} {'peak RSS MB':>11} {'tree MB':>8} {'Node MB':>8}"
    )
    print(header)
    print("-" * len(header))
    rows = [
        (f"converter ({len(results['cases'])} processes, summed)", "converter"),
        ("bundler cold build (verified)", "bundler_cold_verify"),
        ("bundler rebuild, nothing changed", "bundler_rebuild_verify"),
        ("bundler cold build (verify = false)", "bundler_cold_noverify"),
        ("bundler rebuild (verify = false)", "bundler_rebuild_noverify"),
    ]
    for label, key in rows:
        s = med[key]
        node = f"{s['children_mb']:8.0f}" if key != "converter" else f"{'-':>8}"
        print(
            f"{label:42} {s['wall_s']:7.2f} {s['wall_s'] / conv['wall_s']:6.3f}x "
            f"{s['maxrss_mb']:11.0f} {s['tree_mb']:8.0f} {node}"
        )

    print("\nper model (converter: one process each; bytes: all weight shards, concatenated)")
    header = (
        f"{'model':15} {'source':11} {'format':6} {'quant':5} {'conv s':>6} {'conv MB':>7} "
        f"{'conv bytes':>11} {'bundler bytes':>13} {'ratio':>6} {'same bytes':>10} "
        f"{'tfjs err':>8}"
    )
    print(header)
    print("-" * len(header))
    for m in results["per_model"]:
        errors = [e for e in m["bundler_max_abs_error"].values() if e is not None]
        err = f"{max(errors):.1e}" if errors else "-"
        same = "yes" if m["identical"] else f"NO ({m.get('differing_weights', '?')} w)"
        print(
            f"{m['name']:15} {m['source']:11} {m['format']:6} {m['quantize']:5} "
            f"{m['converter_wall_s']:6.2f} {m['converter_maxrss_mb']:7.0f} "
            f"{m['converter_bytes']:11,} {m['bundler_weight_bytes']:13,} "
            f"{m['weights_ratio']:6.3f} {same:>10} {err:>8}"
        )
    for m in results["per_model"]:
        if not m["identical"]:
            print(
                f"  {m['name']}: same weight names {m['same_names']}, same order "
                f"{m['same_order']}, {m['differing_weights']} differ (e.g. "
                f"{', '.join(m['differing_examples'][:3])}), max float diff "
                f"{m['max_abs_float_diff']:.2g}"
            )

    print("\nwhere a cold build spends its time (from its progress lines), median s")
    print(f"  {'verified':>8} {'no verify':>9}")
    for label, by_key in results["cold_breakdown_median_s"].items():
        cells = [
            f"{by_key[k]:8.2f}" if k in by_key else f"{'-':>8}" for k in ("verify", "noverify")
        ]
        print(f"  {cells[0]} {cells[1]:>9}  {label}")

    print("\ngoals")
    for g in results["goals"]:
        mark = "report" if g["met"] is None else ("met" if g["met"] else "MISSED")
        note = f"  ({g['note']})" if g.get("note") else ""
        print(f"  [{mark:^6}] {g['goal']}: {g['value']:.3f}x{note}")
    print_run_notes(results, "run `make bench` again")


def bench_main(
    bench: Callable[[int, Path], int], doc: str | None, argv: list[str] | None, epilog: str = ""
) -> int:
    """The command line every side bench takes: --repeat N and --work DIR."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0], epilog=epilog)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--work", type=Path, default=BENCH / "work", help="work folder (default bench/work)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return bench(args.repeat, args.work.resolve())


def run_facts(started: float, load_before: Any, digest_before: str) -> dict[str, Any]:
    """The machine, the tool versions and whether bundler/ changed: results' shared keys."""
    digest_after = source_digest()
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "bench_seconds": round(time.time() - started, 1),
        },
        "versions": versions(),
        "bundler_source": {
            "before": digest_before,
            "after": digest_after,
            "changed_during_run": digest_before != digest_after,
        },
    }


def print_run_notes(results: dict[str, Any], again: str = "run it again") -> None:
    """Say when bundler/ changed during the run, or the machine was busy when it began."""
    source = results.get("bundler_source", {})
    if source.get("changed_during_run"):
        print(
            "\nWARNING: the bundler's source changed during this run (someone edited bundler/); "
            f"the runs mix versions: {again}"
        )
    load = results.get("machine", {}).get("loadavg_before")
    if load and load[0] > (os.cpu_count() or 1) * 0.75:
        print(
            f"\nnote: load average {load[0]:.1f} before the run on {os.cpu_count()} CPUs: other "
            "work shared the machine, absolute times are inflated (ratios less so)"
        )


if __name__ == "__main__":
    sys.exit(main())
