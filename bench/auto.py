"""`make bench`, the `quantize = "auto"` part: time, bytes and top-1 against plain uint8.

auto's cold build time against a plain uint8 build of the same model, and the weight bytes and
top-1 agreement that float32, uint8 and auto each reach.

What runs (bench/README.md, "The quantize = "auto" benchmark", says how to read it):

- Model: the main bench's calibrated MobileNetV2 α0.35, `<work>/models/mnv2_035.h5` (made by
  bench/prepare.py, reused).
- Samples: 200 rows drawn as prepare.py draws its BatchNorm calibration batch (float32,
  uniform in [0, 1), shape (200, 224, 224, 3)) with a fixed seed, saved once as
  `<work>/auto/samples.npz` (one array), reused while the seed and shape are unchanged.
- Three manifests in `<work>/auto/`, each with its own out and cache_dir, `targets = ["web"]`,
  format graph, the same source and the same `samples`:
  none.toml (`quantize = "none"`), uint8.toml (`quantize = "uint8"`) and auto.toml
  (`quantize = "auto"`, `min_top1 = 0.99`).
- First, `none` is built once (cold): its bytes and agreement, and its time for information;
  it also warms the OS file cache for TensorFlow, Node and the samples.
- Each repetition: cold builds (output and cache removed) of `uint8` and `auto`, alternating
  which goes first, each `bundler build --json` timed with bench/run.py's measure(). Both
  verify the model in tfjs under Node on the 200 samples, which is part of each build.

Reported: auto's median time / uint8's (goal ≤ 3×), the weight bytes of none, uint8 and auto,
each one's top-1 agreement in the tfjs runtime, auto's table (weights per dtype) and the
candidates it judged, and where each cold build's time goes (its progress lines). The numbers go
to the `auto` key of `<work>/results.json`; each build's stderr to `<work>/logs/auto/`. Exit
status 0 even when a goal is missed (MISSED); 1 when a command fails.

Usage: .venv/bin/python bench/auto.py [--repeat N] [--work bench/work]   (bench/run.py runs it)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import run

NET = "mnv2_035"
ROWS = 200
SHAPE = (224, 224, 3)
SAMPLES_SEED = 20250200  # fixed: the same 200 rows every run
MIN_TOP1 = 0.99
GOAL_RATIO = 3.0  # auto's cold build ≤ 3× a plain uint8 build's
RUNTIME = "4.22.0"  # the tfjs runtime a web bundle verifies in
KINDS = ("none", "uint8", "auto")


# --- setup ----------------------------------------------------------------------------------


def make_samples(root: Path) -> dict[str, Any]:
    """200 rows as prepare.py's calibration batch is drawn (`rng.random`, float32 in [0, 1)),
    with a fixed seed; written once, reused while seed and shape are unchanged."""
    path = root / "samples.npz"
    stamp_path = root / "samples.json"
    want = {"seed": SAMPLES_SEED, "shape": [ROWS, *SHAPE], "dtype": "float32"}
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {}
    if path.is_file() and {k: stamp.get(k) for k in want} == want:
        run.say(f"reusing the samples in {path}")
        return {**stamp, "path": str(path)}
    rng = np.random.default_rng(SAMPLES_SEED)
    images = rng.random((ROWS, *SHAPE), dtype=np.float32)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images)
    stamp = {
        **want,
        "distribution": "uniform [0, 1), as bench/prepare.py's BatchNorm calibration batch",
        "data_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
        "file_bytes": path.stat().st_size,
    }
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    run.say(f"wrote {ROWS} samples {list(images.shape)} to {path}")
    return {**stamp, "path": str(path)}


def write_manifest(root: Path, kind: str, models: Path) -> run.Manifest:
    """`<root>/<kind>.toml`: MobileNetV2 α0.35 .h5 → graph, quantize `kind`, on the samples."""
    path = root / f"{kind}.toml"
    out, cache = f"dist-{kind}", f".bundler-cache-{kind}"
    source = os.path.relpath(models / f"{NET}.h5", root)
    lines = [
        "# Written by bench/auto.py; see its docstring.",
        "[project]",
        f'name = "bench-auto-{kind}"',
        f"out = {json.dumps(out)}",
        f"cache_dir = {json.dumps(cache)}",
        'targets = ["web"]',
        "",
        "[[models]]",
        f"name = {json.dumps(NET)}",
        f"source = {json.dumps(source)}",
        'format = "graph"',
        f"quantize = {json.dumps(kind)}",
        'samples = "samples.npz"',
    ]
    if kind == "auto":
        lines.append(f"min_top1 = {MIN_TOP1}")
    path.write_text("\n".join([*lines, ""]), encoding="utf-8")
    return run.Manifest(path, root / out, root / cache)


# --- one build ------------------------------------------------------------------------------


def model_facts(report: dict[str, Any]) -> dict[str, Any]:
    """What the report says of the one model: bytes, agreement, errors, auto's choice."""
    (m,) = report["models"]
    facts = {
        "quantize": m.get("quantize"),
        "weight_bytes": m["weight_bytes"],
        "top1_agreement": m.get("top1_agreement", {}),
        "max_abs_error": m.get("max_abs_error", {}),
        "mean_abs_error": m.get("mean_abs_error", {}),
        "verified_on": m.get("verified_on"),
    }
    chosen = m.get("quantize_auto")
    if chosen is not None:
        facts["quantize_auto"] = {
            "counts": {dtype: len(names) for dtype, names in chosen["table"].items()},
            "weight_bytes": chosen["weight_bytes"],
            "judged_in_tensorflow": chosen.get("judged_in_tensorflow"),
            "candidates": chosen.get("candidates"),
            "constraints": chosen.get("constraints"),
            # Which weights: the table's digest, to see whether repetitions chose alike.
            "table_sha256": hashlib.sha256(
                json.dumps(chosen["table"], sort_keys=True).encode()
            ).hexdigest()[:16],
            "not_uint8": {d: names for d, names in chosen["table"].items() if d != "uint8"},
        }
    return facts


def steps(m: dict[str, Any], report: dict[str, Any]) -> dict[str, float]:
    """Where a cold build's time went, from its progress lines (seconds since build start).

    Each step runs from its line to the next. "convert" holds loading the .h5, the graph
    conversion, TensorFlow's import and its reference prediction on the samples; auto's
    "judge candidates" the TensorFlow runs of candidate dtypes; the step after the choice (or
    after "convert" for uint8) quantizing, sharding, brotli and the cache write, and the tfjs
    runtime's build; "verify" the tfjs check in Node on the samples and the bundle's write.
    """
    marks = []
    for line in m["stderr"].splitlines():
        found = run._PROGRESS.match(line)
        if found:
            marks.append((float(found.group(1)), found.group(2)))
    build_s = float(report["build"]["seconds"])
    out: dict[str, float] = {"process start, imports, manifest, exit": m["wall_s"] - build_s}
    if marks:
        out["fingerprints, before the conversion"] = marks[0][0]
    # An auto build whose "judging" line went unprinted: its first span runs on to the choice.
    unjudged = any(t.startswith("quantize auto for") for _, t in marks) and not any(
        t.startswith("quantize auto: judging") for _, t in marks
    )
    for i, (at, text) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else build_s
        label = _label(text)
        if label == CONVERT and unjudged:
            label = CONVERT_AND_JUDGE
        out[label] = out.get(label, 0.0) + max(0.0, end - at)
    return out


CONVERT = "convert (+ import TensorFlow, reference prediction on the samples)"
CONVERT_AND_JUDGE = "convert (+ import TF, reference prediction) + judge candidates"
JUDGE = "quantize auto: judge candidates in TensorFlow"


def _label(text: str) -> str:
    if text.startswith("converting "):
        return CONVERT
    if text.startswith("quantize auto: judging"):
        return JUDGE
    if text.startswith("quantize auto for"):
        return "after the choice: quantize, shard, brotli, cache write"
    if text.startswith("building the tfjs"):
        return "build the tfjs runtime for web"
    if text.startswith("verifying "):
        return "verify in tfjs (Node) on the samples, write the bundle"
    return re.sub(r"\d+(\.\d+)?", "N", text)  # other lines, numbers aside


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def build(man: run.Manifest, kind: str, log: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A cold build (output and cache removed first): the measurement, with the CPU time the
    build's processes used and what the rest of the machine used meanwhile."""
    man.clean()
    busy = _busy_cpu_s()
    ours = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = run.measure([run.BUNDLER, "build", "--json", man.path])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The build and every descendant it waited for (Node); os.wait4 reaps it, so it counts.
    cpu = (after.ru_utime + after.ru_stime) - (ours.ru_utime + ours.ru_stime)
    others = max(0.0, _busy_cpu_s() - busy - cpu)
    log.write_text(m.stderr, encoding="utf-8")
    run.checked(m, f"bundler build ({kind})")
    report: dict[str, Any] = json.loads(m.stdout)
    facts = model_facts(report)
    top1 = facts["top1_agreement"].get(RUNTIME)
    run.say(
        f"  {kind:6} {m.wall_s:7.2f} s {m.maxrss_mb:6.0f} MB  "
        f"{facts['weight_bytes']:>10,} weight bytes, top-1 {_pct(top1)}  "
        f"(CPU: build {cpu:.1f} s, other processes {others:.1f} s; load {m.load1:.2f})"
    )
    measured = {**asdict(m), "cpu_s": cpu, "others_cpu_s": others}
    return measured, report


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


# --- the bench ------------------------------------------------------------------------------


def bench(repeat: int, work: Path) -> int:
    """The builds, `repeat` times; the table; the `auto` key of results.json."""
    root = work / "auto"
    models = work / "models"
    logs = work / "logs" / "auto"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    root.mkdir(parents=True, exist_ok=True)
    stamp = run.prepare_models(models)
    samples = make_samples(root)
    mans = {kind: write_manifest(root, kind, models) for kind in KINDS}

    load_before = os.getloadavg()
    digest_before = run.source_digest()
    started = time.time()

    run.say("float32 (quantize none), once: bytes and agreement (also warms the file cache)")
    none_m, none_report = build(mans["none"], "none", logs / "none.log")
    none = {
        "build": none_m,
        "breakdown": steps(none_m, none_report),
        "model": model_facts(none_report),
    }
    run._strip_output(none)

    runs: list[dict[str, Any]] = []
    for rep in range(1, repeat + 1):
        order = ("uint8", "auto") if rep % 2 == 1 else ("auto", "uint8")
        run.say(f"auto repetition {rep}/{repeat} ({order[0]} first)")
        rec: dict[str, Any] = {"repetition": rep, "first": order[0]}
        before = run.source_digest()
        for kind in order:
            m, report = build(mans[kind], kind, logs / f"{rep}-{kind}.log")
            rec[kind] = {
                "build": m,
                "breakdown": steps(m, report),
                "model": model_facts(report),
            }
        rec["bundler_source_changed"] = run.source_digest() != before
        if rec["bundler_source_changed"]:
            run.say("  WARNING: bundler/ changed during this repetition (edited by someone else?)")
        run._strip_output(rec)
        runs.append(rec)

    results = summarize(none, runs, samples, stamp)
    results.update(run.run_facts(started, load_before, digest_before))
    print_table(results)
    path = run.merge_results(work, "auto", results)
    print(f"\nwrote the auto key of {path}; logs in {logs}")
    return 0


def summarize(
    none: dict[str, Any],
    runs: list[dict[str, Any]],
    samples: dict[str, Any],
    stamp: dict[str, Any],
) -> dict[str, Any]:
    metrics = ("wall_s", "maxrss_mb", "tree_mb", "children_mb", "cpu_s", "others_cpu_s")
    median = {
        "none": {m: none["build"][m] for m in metrics},
        **{
            kind: {m: run.median([r[kind]["build"][m] for r in runs]) for m in metrics}
            for kind in ("uint8", "auto")
        },
    }
    # Bytes and agreement: the last repetition's (the same each time unless the choice moved).
    models = {"none": none["model"], **{k: runs[-1][k]["model"] for k in ("uint8", "auto")}}
    tables = {r["auto"]["model"]["quantize_auto"]["table_sha256"] for r in runs}
    breakdown: dict[str, dict[str, float]] = {"none": none["breakdown"]}
    for kind in ("uint8", "auto"):
        labels: dict[str, list[float]] = {}
        for r in runs:
            for label, seconds in r[kind]["breakdown"].items():
                labels.setdefault(label, []).append(seconds)
        breakdown[kind] = {label: run.median(v) for label, v in labels.items()}
    # While the judging line goes unprinted, auto's first span holds the conversion and the
    # judging; uint8's the conversion and the packing, which auto does after its choice.
    after = "after the choice: quantize, shard, brotli, cache write"
    judge_estimate = None
    if CONVERT_AND_JUDGE in breakdown["auto"] and CONVERT in breakdown["uint8"]:
        judge_estimate = (
            breakdown["auto"][CONVERT_AND_JUDGE]
            + breakdown["auto"].get(after, 0.0)
            - breakdown["uint8"][CONVERT]
        )
    ratio = median["auto"]["wall_s"] / median["uint8"]["wall_s"]
    wb = {k: models[k]["weight_bytes"] for k in KINDS}
    top1 = {k: models[k]["top1_agreement"].get(RUNTIME) for k in KINDS}
    goals = [
        {
            "goal": f"auto's cold build <= {GOAL_RATIO:g}x a plain uint8 build's",
            "value": ratio,
            "unit": "x",
            "met": ratio <= GOAL_RATIO,
        },
        {
            "goal": f"auto's top-1 agreement in tfjs {RUNTIME} >= min_top1 = {MIN_TOP1}",
            "value": float("nan") if top1["auto"] is None else top1["auto"],
            "unit": "",
            "met": top1["auto"] is not None and top1["auto"] >= MIN_TOP1,
        },
        {
            "goal": "auto's weight bytes vs float32 (report only)",
            "value": wb["auto"] / wb["none"],
            "unit": "x",
            "met": None,
        },
        {
            "goal": "auto's weight bytes vs plain uint8 (report only)",
            "value": wb["auto"] / wb["uint8"],
            "unit": "x",
            "met": None,
            "note": "the same choice in every repetition"
            if len(tables) == 1
            else f"{len(tables)} different choices over the repetitions",
        },
    ]
    return {
        "repeat": len(runs),
        "model": f"{NET}.h5 (graph)",
        "min_top1": MIN_TOP1,
        "runtime": RUNTIME,
        "samples": samples,
        "prepared": stamp,
        "median": median,
        "ratio_auto_to_uint8": ratio,
        "models": models,
        "same_choice_every_repetition": len(tables) == 1,
        "breakdown_median_s": breakdown,
        "judge_estimate_s": judge_estimate,
        "goals": goals,
        "none_build": none,
        "runs": runs,
    }


def print_table(results: dict[str, Any]) -> None:
    med = results["median"]
    models = results["models"]
    n = results["repeat"]
    base = med["uint8"]["wall_s"]
    print(
        f'\nquantize = "auto" (min_top1 = {results["min_top1"]}) on MobileNetV2 α0.35, '
        f"{ROWS} samples, cold builds verified in tfjs {RUNTIME}; median of {n} "
        f"run{'s' if n > 1 else ''} (none: one build), {os.cpu_count()} CPUs\n"
    )
    header = (
        f"{'quantize':8} {'wall s':>7} {'x uint8':>7} {'CPU s':>6} {'others':>6} {'RSS MB':>6} "
        f"{'weight bytes':>12} {'x f32':>6} {'top-1 tfjs':>10} {'top-1 TF':>8} "
        f"{'max err':>8} {'mean err':>8}"
    )
    print(header)
    print("-" * len(header))
    f32 = models["none"]["weight_bytes"]
    for kind in KINDS:
        s, m = med[kind], models[kind]
        judged = (m.get("quantize_auto") or {}).get("judged_in_tensorflow") or {}
        tf_top1 = _pct(judged.get("top1_agreement")) if judged else "-"
        err = m["max_abs_error"].get(RUNTIME)
        mean = m["mean_abs_error"].get(RUNTIME)
        print(
            f"{kind:8} {s['wall_s']:7.2f} {s['wall_s'] / base:6.3f}x {s['cpu_s']:6.1f} "
            f"{s['others_cpu_s']:6.1f} {s['maxrss_mb']:6.0f} "
            f"{m['weight_bytes']:12,} {m['weight_bytes'] / f32:5.3f}x "
            f"{_pct(m['top1_agreement'].get(RUNTIME)):>10} {tf_top1:>8} "
            f"{'-' if err is None else f'{err:.1e}':>8} {'-' if mean is None else f'{mean:.1e}':>8}"
        )
    print(
        "  CPU s: the build's processes (Python and Node); others: every other process's CPU "
        "seconds meanwhile (0 on a quiet machine)"
    )
    for kind in KINDS:
        on = models[kind].get("verified_on")
        if not on or on.get("inputs") != "samples" or on.get("rows") != ROWS:
            print(f"  note: {kind} was verified on {on}, not the {ROWS} samples")

    chosen = models["auto"].get("quantize_auto") or {}
    counts = Counter(chosen.get("counts", {}))
    total = sum(counts.values())
    mix = ", ".join(f"{counts[d]} {d}" for d in ("uint8", "uint16", "float16", "none") if counts[d])
    print(
        f"\nauto's choice: {mix} ({total} float32 weights), {chosen.get('weight_bytes', 0):,} "
        f"weight bytes; {chosen.get('candidates')} candidates judged in TensorFlow"
    )
    for dtype, names in chosen.get("not_uint8", {}).items():
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        print(f"  {dtype}: {shown}")
    if not results["same_choice_every_repetition"]:
        print("  note: the choice differed between repetitions (the table is the last one's)")

    print("\nwhere each cold build spends its time (from its progress lines), median s")
    breakdown = results["breakdown_median_s"]
    labels = list(dict.fromkeys(label for kind in KINDS for label in breakdown[kind]))
    print(f"  {'none':>7} {'uint8':>7} {'auto':>7}")
    for label in labels:
        cells = [
            f"{breakdown[k][label]:7.2f}" if label in breakdown[k] else f"{'-':>7}" for k in KINDS
        ]
        print(f"  {' '.join(cells)}  {label}")
    if results["judge_estimate_s"] is not None:
        print(
            f"  judging candidates ≈ {results['judge_estimate_s']:.2f} s (auto's line "
            '"quantize auto: judging candidates" is not in its stderr: estimated as auto\'s '
            "conversion through the choice, plus its packing, less uint8's conversion step)"
        )

    print("\ngoals")
    for g in results["goals"]:
        mark = "report" if g["met"] is None else ("met" if g["met"] else "MISSED")
        note = f"  ({g['note']})" if g.get("note") else ""
        print(f"  [{mark:^6}] {g['goal']}: {g['value']:.3f}{g['unit']}{note}")
    run.print_run_notes(results)


def main(argv: list[str] | None = None) -> int:
    return run.bench_main(bench, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
