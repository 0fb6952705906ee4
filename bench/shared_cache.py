"""`make bench`, the shared cache part: a second clean checkout against a warm shared store.

The main bench's eight models built in a clean checkout that publishes to a shared build cache
(an S3-compatible store, here moto's server on 127.0.0.1), then in a second clean checkout
against the now warm store, as a time ratio, with the two bundles compared byte for byte.

What runs (bench/README.md, "The shared cache benchmark", says how to read it):

- Models: the main bench's (bench/prepare.py via bench/run.py's prepare_models, reused from
  `<work>/models/`), the eight cases of bench/run.py, in its manifest (bench/run.py's
  write_manifest: `targets = ["web"]`, verified, out "dist", cache_dir ".bundler-cache").
- Store: `.venv/bin/moto_server -H 127.0.0.1 -p <free port>`, started for the run and stopped
  at its end; the builds reach it through the standard AWS settings (AWS_ENDPOINT_URL, test
  credentials, us-east-1) and `BUNDLER_CACHE=s3://<bucket>/bench` in their environment, which
  puts the store behind each checkout's local `.bundler-cache`. A fresh bucket per repetition.
- First, untimed: one build of the MLP alone with no shared store (as bench/run.py's warm-up:
  installs tfjs for Node on first use, warms the OS file cache).
- Each repetition, in `<work>/shared_cache/rep<N>/`: checkout `a/` (a fresh folder: the
  manifest, no cache, no out) built cold against the empty bucket, which converts, verifies and
  publishes every model; then checkout `b/` (another fresh folder: the same manifest text, so
  the same project name and the same relative source paths) built against the warm bucket with
  a cold local cache. Each `bundler build --json bundle.toml` is timed with bench/run.py's
  measure(), in the checkout's folder.

Reported: A's time, B's time, B/A (goal ≤ 0.05), whether B's output tree is byte-identical to
A's (every file under out), what B converted (must be nothing) and whether it verified anything
(its progress lines), whether it built a tfjs runtime or installed npm packages (B runs as a
fresh machine would: BUNDLER_NODE_CACHE names an empty folder), where B's time goes (its
progress lines and the report's `build.seconds`), what the store held after A, and the CPU
seconds other processes took during each build. The numbers go to the `shared_cache` key of
`<work>/results.json`; each build's stderr to `<work>/logs/shared_cache/`. Exit status 0 even
when a goal is missed (MISSED); 1 when a command fails.

Usage: .venv/bin/python bench/shared_cache.py [--repeat N] [--work bench/work]
       (bench/run.py runs it; alone: bench/run.py --shared-cache-only)
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import run

GOAL_RATIO = 0.05  # the second checkout's build ≤ 0.05× the first's (cold)
PREFIX = "bench"  # the key prefix in each bucket: s3://<bucket>/bench
MOTO = Path(sys.executable).with_name("moto_server")
AWS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Settings that would point boto3 elsewhere than the local server.
AWS_OTHERS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


# --- the store ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """moto's S3 server on a free 127.0.0.1 port for the run; yields its endpoint URL."""
    if not MOTO.is_file():
        sys.stderr.write(f"\n{MOTO} is missing: install the dev extras (moto[server])\n")
        sys.exit(1)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        for _ in range(150):  # up to ~15 s
            if proc.poll() is not None or _listening(port):
                break
            time.sleep(0.1)
        if proc.poll() is not None or not _listening(port):
            sys.stderr.write(f"\nmoto_server did not start on {endpoint}; see {log}\n")
            sys.exit(1)
        run.say(f"moto_server (pid {proc.pid}) on {endpoint}")
        yield endpoint
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        run.say(f"moto_server (pid {proc.pid}) stopped")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) variables of this process, which measure() passes on to the
    builds; restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set(values)
        yield
    finally:
        _set(saved)


def _set(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def s3_client() -> Any:
    import boto3

    return boto3.client("s3")


def store_contents(bucket: str) -> dict[str, Any]:
    """What the bucket holds under the prefix: entries (one per model build), derived entries
    (tfjs runtimes, compressed forms) and blobs."""
    s3 = s3_client()
    counts = {"entries": 0, "derived": 0, "blobs": 0, "other": 0}
    size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{PREFIX}/"):
        for obj in page.get("Contents", []):
            kind = obj["Key"][len(PREFIX) + 1 :].split("/", 1)[0]
            counts[kind if kind in counts else "other"] += 1
            size += int(obj["Size"])
    return {**counts, "bytes": size}


# --- one build ------------------------------------------------------------------------------


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def build(man: run.Manifest, what: str, log: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`bundler build --json` in the checkout's folder, timed; with the CPU time of the build's
    processes and of every other process meanwhile (the server's requests count as others)."""
    busy = _busy_cpu_s()
    ours = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = run.measure([run.BUNDLER, "build", "--json", man.path.name], cwd=man.path.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (ours.ru_utime + ours.ru_stime)
    others = max(0.0, _busy_cpu_s() - busy - cpu)
    log.write_text(m.stderr, encoding="utf-8")
    run.checked(m, what)
    report: dict[str, Any] = json.loads(m.stdout)
    b = report["build"]
    run.say(
        f"  {what:34} {m.wall_s:7.2f} s {m.maxrss_mb:6.0f} MB  (converted "
        f"{len(b['converted'])}, reused {len(b['reused'])}; CPU: build {cpu:.1f} s, others "
        f"{others:.1f} s; load {m.load1:.2f})"
    )
    measured = {**asdict(m), "cpu_s": cpu, "others_cpu_s": others}
    return measured, report


def progress(m: dict[str, Any]) -> list[str]:
    """The build's progress lines ("12.3s converting ..."), as printed."""
    return [line.strip() for line in m["stderr"].splitlines() if run._PROGRESS.match(line)]


FIRST = "start of the build to its first progress line (fingerprints; B: the store's entries)"


def spans(m: dict[str, Any], report: dict[str, Any]) -> dict[str, float]:
    """Where a build's time went: process start and exit (wall time less the report's
    `build.seconds`), the start to the first progress line, then each line to the next (the
    last to the end of the build: rendering and writing the bundle after it)."""
    marks = []
    for line in m["stderr"].splitlines():
        found = run._PROGRESS.match(line)
        if found:
            marks.append((float(found.group(1)), found.group(2)))
    build_s = float(report["build"]["seconds"])
    out = {"process start, imports, manifest, exit": m["wall_s"] - build_s}
    out[FIRST] = marks[0][0] if marks else build_s
    for i, (at, text) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else build_s
        out[text] = out.get(text, 0.0) + max(0.0, end - at)
    return out


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by its path relative to it."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Whether two output trees hold the same files with the same bytes; if not, which differ."""
    ta, tb = tree(a), tree(b)
    differ = sorted(k for k in ta.keys() & tb.keys() if ta[k] != tb[k])
    only_a, only_b = sorted(ta.keys() - tb.keys()), sorted(tb.keys() - ta.keys())
    return {
        "identical": bool(ta) and ta == tb,
        "files": len(ta),
        "bytes": sum(len(v) for v in ta.values()),
        "differing": differ[:20],
        "only_in_a": only_a[:20],
        "only_in_b": only_b[:20],
    }


def shared_warnings(report: dict[str, Any]) -> list[str]:
    return [w for w in report.get("warnings", []) if "shared cache" in w]


# --- the bench ------------------------------------------------------------------------------


def checkout(folder: Path, models: Path) -> run.Manifest:
    """A clean checkout: a fresh folder with the main bench's manifest, no cache, no out."""
    shutil.rmtree(folder, ignore_errors=True)
    return run.manifest(folder / "bundle.toml", run.CASES, models, "dist", ".bundler-cache", True)


def repetition(rep: int, root: Path, models: Path, logs: Path) -> dict[str, Any]:
    bucket = f"bench-shared-cache-{rep}"
    url = f"s3://{bucket}/{PREFIX}"
    s3_client().create_bucket(Bucket=bucket)
    run.say(f"shared cache repetition {rep} (store {url}, a fresh bucket)")
    base = root / f"rep{rep}"
    shutil.rmtree(base, ignore_errors=True)
    a, b = checkout(base / "a", models), checkout(base / "b", models)
    if a.path.read_bytes() != b.path.read_bytes():
        sys.stderr.write(f"\nthe two checkouts' manifests differ: {a.path}, {b.path}\n")
        sys.exit(1)
    rec: dict[str, Any] = {"repetition": rep, "store": url}
    before = run.source_digest()
    with environment({"BUNDLER_CACHE": url}):
        am, areport = build(a, "checkout A (cold, empty store)", logs / f"{rep}-a.log")
        rec["store_after_a"] = store_contents(bucket)
        # B is a fresh machine: no npm packages installed either (an empty node folder).
        b_node = base / "b-node"
        with environment({"BUNDLER_NODE_CACHE": str(b_node)}):
            bm, breport = build(b, "checkout B (cold, warm store)", logs / f"{rep}-b.log")
    rec["bundler_source_changed"] = run.source_digest() != before
    if rec["bundler_source_changed"]:
        run.say("  WARNING: bundler/ changed during this repetition (edited by someone else?)")
    same = compare(a.out, b.out)
    b_lines = progress(bm)
    rec["a"] = {
        "build": am,
        "build_seconds": areport["build"]["seconds"],
        "spans": spans(am, areport),
        "converted": areport["build"]["converted"],
        "reused": areport["build"]["reused"],
        "shared_cache_warnings": shared_warnings(areport),
        "progress": progress(am),
    }
    rec["b"] = {
        "build": bm,
        "build_seconds": breport["build"]["seconds"],
        "spans": spans(bm, breport),
        "converted": breport["build"]["converted"],
        "reused": breport["build"]["reused"],
        "written": breport["build"].get("written"),
        "shared_cache_warnings": shared_warnings(breport),
        "progress": b_lines,
        "verified_or_ran_tf": [
            line for line in b_lines if " verifying" in line or " running the source" in line
        ],
        "built_or_installed": [
            line for line in b_lines if " building the tfjs" in line or " installing" in line
        ],
        "node_folder_made": b_node.exists(),
    }
    rec["ratio"] = bm["wall_s"] / am["wall_s"]
    rec["output"] = same
    run.say(
        f"  B/A {rec['ratio']:.4f}; output {'byte-identical' if same['identical'] else 'DIFFERS'}"
        f" ({same['files']} files, {same['bytes']:,} bytes); store after A: "
        f"{rec['store_after_a']['entries']} entries, {rec['store_after_a']['derived']} derived, "
        f"{rec['store_after_a']['blobs']} blobs"
    )
    run._strip_output(rec)
    return rec


def bench(repeat: int, work: Path) -> int:
    """The builds, `repeat` times; the table; the `shared_cache` key of results.json."""
    root = work / "shared_cache"
    models = work / "models"
    logs = work / "logs" / "shared_cache"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    stamp = run.prepare_models(models)

    # No shared store in the warm-up: the MLP alone, local cache only (as bench/run.py's).
    with environment({"BUNDLER_CACHE": None}):
        warm = run.manifest(
            root / "warmup" / "bundle.toml",
            tuple(c for c in run.CASES if c.name == "mlp_layers"),
            models,
            "dist",
            ".bundler-cache",
            True,
        )
        warm.clean()
        run.say("warm-up: one bundler build of the MLP, no shared store (untimed)")
        warm_m, _ = run.bundler_build(warm, "warm-up build", logs / "warmup.log")

    load_before = os.getloadavg()
    digest_before = run.source_digest()
    started = time.time()
    runs: list[dict[str, Any]] = []
    with moto_server(logs / "moto_server.log") as endpoint:
        aws: dict[str, str | None] = {"AWS_ENDPOINT_URL": endpoint, **AWS}
        aws.update(dict.fromkeys(AWS_OTHERS))
        with environment(aws):
            for rep in range(1, repeat + 1):
                runs.append(repetition(rep, root, models, logs))

    results = summarize(runs, stamp)
    results.update(run.run_facts(started, load_before, digest_before))
    results["machine"]["warmup_build_s"] = round(warm_m.wall_s, 2)
    print_table(results)
    path = run.merge_results(work, "shared_cache", results)
    print(f"\nwrote the shared_cache key of {path}; logs in {logs}")
    return 0


def summarize(runs: list[dict[str, Any]], stamp: dict[str, Any]) -> dict[str, Any]:
    metrics = ("wall_s", "maxrss_mb", "tree_mb", "children_mb", "cpu_s", "others_cpu_s", "load1")
    median = {
        side: {m: run.median([r[side]["build"][m] for r in runs]) for m in metrics}
        for side in ("a", "b")
    }
    ratio = median["b"]["wall_s"] / median["a"]["wall_s"]
    identical = all(r["output"]["identical"] for r in runs)
    converted = sorted({name for r in runs for name in r["b"]["converted"]})
    verified = [line for r in runs for line in r["b"]["verified_or_ran_tf"]]
    warnings = [w for r in runs for side in ("a", "b") for w in r[side]["shared_cache_warnings"]]
    goals = [
        {
            "goal": f"second clean checkout, warm shared store <= {GOAL_RATIO}x the cold build",
            "value": ratio,
            "unit": "x",
            "met": ratio <= GOAL_RATIO,
        },
        {
            "goal": "its output byte-identical to the first checkout's, every file under out",
            "value": float(sum(r["output"]["identical"] for r in runs)),
            "unit": f" of {len(runs)} repetition(s)",
            "met": identical,
        },
        {
            "goal": "it converts nothing (build.converted empty) and verifies nothing",
            "value": float(len(converted)),
            "unit": " model(s) converted",
            "met": not converted and not verified,
            "note": (f"converted {', '.join(converted)}; " if converted else "")
            + (f"{len(verified)} verify line(s)" if verified else ""),
        },
    ]
    return {
        "repeat": len(runs),
        "cases": [asdict(c) for c in run.CASES],
        "prepared": stamp,
        "median": median,
        "ratio_b_to_a": ratio,
        "output_identical": identical,
        "b_converted": converted,
        "shared_cache_warnings": warnings,
        "goals": goals,
        "runs": runs,
    }


def print_table(results: dict[str, Any]) -> None:
    med = results["median"]
    n = results["repeat"]
    runs = results["runs"]
    print(
        f"\nshared build cache (moto_server on 127.0.0.1): the main bench's "
        f"{len(results['cases'])} models, two clean checkouts; median of {n} "
        f"run{'s' if n > 1 else ''}, {os.cpu_count()} CPUs\n"
    )
    header = (
        f"{'checkout':38} {'wall s':>7} {'x A':>7} {'CPU s':>6} {'others':>6} {'RSS MB':>6} "
        f"{'converted':>9} {'reused':>6}"
    )
    print(header)
    print("-" * len(header))
    last = runs[-1]
    for side, label in (("a", "A: cold, empty store"), ("b", "B: cold local cache, warm store")):
        s = med[side]
        print(
            f"{label:38} {s['wall_s']:7.2f} {s['wall_s'] / med['a']['wall_s']:6.4f}x "
            f"{s['cpu_s']:6.1f} {s['others_cpu_s']:6.1f} {s['maxrss_mb']:6.0f} "
            f"{len(last[side]['converted']):9} {len(last[side]['reused']):6}"
        )
    print(
        "  CPU s: the build's processes (Python and Node); others: every other process's CPU "
        "seconds meanwhile (moto_server's included)"
    )
    for r in runs:
        out, store = r["output"], r["store_after_a"]
        shown = "byte-identical" if out["identical"] else "DIFFERENT"
        print(
            f"\nrepetition {r['repetition']}: A {r['a']['build']['wall_s']:.2f} s, "
            f"B {r['b']['build']['wall_s']:.2f} s, B/A {r['ratio']:.4f}; B's out {shown} to "
            f"A's ({out['files']} files, {out['bytes']:,} bytes); the store after A: "
            f"{store['entries']} entries, {store['derived']} derived, {store['blobs']} blobs, "
            f"{store['bytes']:,} bytes"
        )
        for key in ("differing", "only_in_a", "only_in_b"):
            if out[key]:
                print(f"  {key.replace('_', ' ')}: {', '.join(out[key])}")
        print(f"  B converted: {r['b']['converted'] or 'nothing'}")
        made = r["b"]["built_or_installed"]
        print(
            f"  B built or installed: {'; '.join(made) or 'nothing'} (its empty npm folder "
            f"{'was filled' if r['b']['node_folder_made'] else 'stayed absent'})"
        )
        print(
            "  where B's time went (s; a line's span runs to the next line, the last to the end):"
        )
        for label, seconds in r["b"]["spans"].items():
            print(f"    {seconds:6.2f}  {label}")
    for w in results["shared_cache_warnings"]:
        print(f"  warning from a build: {w}")

    print("\ngoals")
    for g in results["goals"]:
        mark = "report" if g["met"] is None else ("met" if g["met"] else "MISSED")
        note = f"  ({g['note']})" if g.get("note") else ""
        value = f"{g['value']:.4f}" if g["unit"] == "x" else f"{g['value']:g}"
        print(f"  [{mark:^6}] {g['goal']}: {value}{g['unit']}{note}")
    run.print_run_notes(results)


def main(argv: list[str] | None = None) -> int:
    return run.bench_main(bench, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
