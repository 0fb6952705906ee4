"""`make bench`, the TFLite part: `bundler build` (tflite) against one converter call per model.

What runs, side by side in one run (bench/README.md, "The TFLite benchmark", says how to read
it):

- Models: the ones bench/prepare.py makes for the main bench (bench/work/models/, reused).
- Seven builds, the manifest bench/work/tflite/bundle.toml (`targets = ["tflite"]`, verified):

    quantize "none":  MobileNetV2 1.0 .h5, MobileNetV2 1.0 SavedModel,
                      MobileNetV2 0.35 .h5, MobileNetV2 0.35 SavedModel, MLP .h5
    quantize "uint8": MobileNetV2 0.35 .h5, MobileNetV2 0.35 SavedModel

  The main bench's eight cases less `mlp_layers_u8`: `format` means nothing to TFLite, so the
  MLP is one `.h5` case; and its uint8 twin would only repeat the MobileNetV2 uint8 path.
- converter: one process per model, `python bench/tflite.py convert-one ...` (below), as a user
  runs TFLite's Python converter today, with what bundler/targets/tflite/convert.py does for the
  same source and options: `tf_keras.models.load_model(path, compile=False)` and
  `tf.lite.TFLiteConverter.from_keras_model` for a Keras 2 `.h5`;
  `TFLiteConverter.from_saved_model(path, signature_keys=["serving_default"])` for a
  SavedModel; uint8 (and uint16) = `optimizations = [tf.lite.Optimize.DEFAULT]` (dynamic
  range), float16 adds `target_spec.supported_types = [tf.float16]`. Nothing is verified.
  Wall time is the sum over the processes, peak RSS the largest of them.
- bundler cold: `bundler build --json bundle.toml` with no cache and no output folder; it
  includes running every `.tflite` in `tf.lite.Interpreter` against the source model.
- bundler rebuild: the same command again, nothing changed (for information).
- bytes: per model, whether the bundler's `.tflite` is byte-identical to the converter's
  (sha256), in every repetition; and the bundler's verified error: every float32 file must be
  within 1e-5 of its source.

`tflite_convert` (the CLI) is not the baseline: in TF 2.19 it reads an `.h5` with Keras 3, not
tf_keras, which is neither the bundler's path nor a file these tf_keras models load in.

Measured with bench/run.py's helpers (one process at a time, wall time and peak RSS,
repetitions alternating which side goes first, medians). The numbers go to the `tflite` key of
bench/work/results.json. Exit status 0 even when a goal is missed (MISSED); 1 when a command
fails.

Usage:
    .venv/bin/python bench/tflite.py [--repeat N] [--work bench/work]   (bench/run.py runs it)
    .venv/bin/python bench/tflite.py convert-one --source PATH --kind h5|saved_model \\
        --quantize none|float16|uint16|uint8 --out FILE.tflite
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Only the standard library above: `convert-one` is the baseline, and must import no more than a
# user's converter script does. The bench's helpers (numpy, psutil) load in `bench()`.

SIGNATURE = "serving_default"  # as bundler/targets/tflite/convert.py
GOAL_COLD = 0.5  # cold build ≤ 0.5× the converter calls' summed wall time
GOAL_ERROR = 1e-5  # every float32 .tflite within 1e-5 of its source
QUANTIZE = ("none", "float16", "uint16", "uint8")


# --- the baseline: one converter call -------------------------------------------------------


def convert_one(source: Path, kind: str, quantize: str, out: Path) -> None:
    """One model with TFLite's Python converter, with the bundler's API calls and options."""
    import tensorflow as tf

    if kind == "h5":
        import tf_keras

        model = tf_keras.models.load_model(str(source), compile=False)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(source), signature_keys=[SIGNATURE]
        )
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    data = converter.convert()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)


def convert_one_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tflite.py convert-one",
        description="Convert one model to .tflite as bundler/targets/tflite/convert.py does.",
    )
    parser.add_argument("--source", type=Path, required=True, help=".h5 file or SavedModel")
    parser.add_argument("--kind", choices=("h5", "saved_model"), required=True)
    parser.add_argument("--quantize", choices=QUANTIZE, default="none")
    parser.add_argument("--out", type=Path, required=True, help="the .tflite file to write")
    args = parser.parse_args(argv)
    convert_one(args.source, args.kind, args.quantize, args.out)
    return 0


# --- the cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One model build: a bench name, the prepared net, its source and quantization."""

    name: str
    net: str
    source: str  # "h5" | "saved_model"
    quantize: str  # "none" | "uint8"

    def source_path(self, models: Path) -> Path:
        return models / (f"{self.net}.h5" if self.source == "h5" else f"{self.net}_savedmodel")


CASES = (
    Case("mnv2_100_h5", "mnv2_100", "h5", "none"),
    Case("mnv2_100_sm", "mnv2_100", "saved_model", "none"),
    Case("mnv2_035_h5", "mnv2_035", "h5", "none"),
    Case("mnv2_035_sm", "mnv2_035", "saved_model", "none"),
    Case("mlp_h5", "mlp", "h5", "none"),
    Case("mnv2_035_h5_u8", "mnv2_035", "h5", "uint8"),
    Case("mnv2_035_sm_u8", "mnv2_035", "saved_model", "uint8"),
)


def write_manifest(path: Path, cases: tuple[Case, ...], models: Path) -> None:
    lines = [
        "# Written by bench/tflite.py; see its docstring.",
        "[project]",
        'name = "bench-tflite"',
        'out = "dist"',
        'cache_dir = ".bundler-cache"',
        'targets = ["tflite"]',
        "",
    ]
    for case in cases:
        source = os.path.relpath(case.source_path(models), path.parent)
        lines += [
            "[[models]]",
            f"name = {json.dumps(case.name)}",
            f"source = {json.dumps(source)}",
            f"quantize = {json.dumps(case.quantize)}",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def convert_cmd(case: Case, models: Path, out: Path) -> list[str | Path]:
    return [
        sys.executable,
        Path(__file__).resolve(),
        "convert-one",
        "--source",
        case.source_path(models),
        "--kind",
        case.source,
        "--quantize",
        case.quantize,
        "--out",
        out,
    ]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the bench ------------------------------------------------------------------------------


def bench(repeat: int, work: Path) -> int:
    """Both sides, `repeat` times; the table; the `tflite` key of results.json."""
    import run

    root = work / "tflite"
    models = work / "models"
    logs = work / "logs" / "tflite"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    stamp = run.prepare_models(models)
    write_manifest(root / "bundle.toml", CASES, models)
    man = run.Manifest(root / "bundle.toml", root / "dist", root / ".bundler-cache")
    converted = root / "converter"

    def build(what: str, log: str) -> tuple[run.Measured, dict[str, Any]]:
        m = run.measure([run.BUNDLER, "build", "--json", man.path])
        (logs / log).write_text(m.stderr, encoding="utf-8")
        run.checked(m, what)
        report: dict[str, Any] = json.loads(m.stdout)
        done = report["build"]
        run.say(
            f"  {what:26} {m.wall_s:6.2f} s {m.maxrss_mb:6.0f} MB  "
            f"(converted {len(done['converted'])}, reused {len(done['reused'])})"
        )
        return m, report

    # Untimed: warm the file cache for TensorFlow's libraries, for both sides.
    run.say("warm-up: one converter call and one bundler build of the MLP (untimed)")
    mlp = next(c for c in CASES if c.net == "mlp")
    warm = root / "warmup"
    write_manifest(warm / "bundle.toml", (mlp,), models)
    shutil.rmtree(warm / "dist", ignore_errors=True)
    shutil.rmtree(warm / ".bundler-cache", ignore_errors=True)
    run.checked(run.measure(convert_cmd(mlp, models, warm / "mlp.tflite")), "warm-up converter")
    run.checked(run.measure([run.BUNDLER, "build", warm / "bundle.toml"]), "warm-up build")

    def converter_part(rec: dict[str, Any], rep: int) -> None:
        shutil.rmtree(converted, ignore_errors=True)
        side = {}
        for case in CASES:
            out = converted / f"{case.name}.tflite"
            m = run.measure(convert_cmd(case, models, out))
            (logs / f"{rep}-converter-{case.name}.log").write_text(m.stderr, encoding="utf-8")
            run.checked(m, f"converter for {case.name}")
            run.say(f"  converter {case.name:16} {m.wall_s:6.2f} s {m.maxrss_mb:6.0f} MB")
            side[case.name] = {**asdict(m), "bytes": out.stat().st_size, "sha256": sha256(out)}
        rec["converter"] = side

    def bundler_part(rec: dict[str, Any], rep: int) -> None:
        man.clean()
        cold, report = build("bundler cold", f"{rep}-bundler-cold.log")
        again, again_report = build("bundler rebuild", f"{rep}-bundler-rebuild.log")
        hit = not again_report["build"]["converted"] and not again_report["build"]["written"]
        if not hit:
            run.say(f"  WARNING: the rebuild converted or wrote something; see {logs}")
        files = {}
        for entry in report["models"]:
            path = man.out / entry["tflite"]["files"][0]
            files[entry["name"]] = {
                "file": str(path.relative_to(root)),
                "bytes": path.stat().st_size,
                "sha256": sha256(path),
                "max_abs_error": entry["max_abs_error"]["tflite"],
                "ops": entry["tflite"]["ops"],
                "quantization": entry["tflite"]["quantization"],
            }
        rec["bundler"] = {
            "cold": asdict(cold),
            "rebuild": asdict(again),
            "rebuild_cache_hit": hit,
            "breakdown": steps(cold, report),
            "models": files,
        }

    load_before = os.getloadavg()
    digest_before = run.source_digest()
    started = time.time()
    runs: list[dict[str, Any]] = []
    for rep in range(1, repeat + 1):
        converter_first = rep % 2 == 1
        run.say(
            f"tflite repetition {rep}/{repeat} ({'converter' if converter_first else 'bundler'} "
            "first)"
        )
        rec: dict[str, Any] = {"repetition": rep, "converter_first": converter_first}
        before = run.source_digest()
        order = (converter_part, bundler_part)
        for part in order if converter_first else order[::-1]:
            part(rec, rep)
        rec["bundler_source_changed"] = run.source_digest() != before
        if rec["bundler_source_changed"]:
            run.say("  WARNING: bundler/ changed during this repetition (edited by someone else?)")
        run._strip_output(rec)
        runs.append(rec)

    results = summarize(runs, stamp, run.median)
    results.update(run.run_facts(started, load_before, digest_before))
    print_table(results)
    path = run.merge_results(work, "tflite", results)
    print(f"\nwrote the tflite key of {path}; logs in {logs}")
    return 0


def steps(m: Any, report: dict[str, Any]) -> dict[str, float]:
    """Where a cold build's time went, from its progress lines (seconds since build start).

    Each model's step runs from its "converting" line to the next line: loading the source,
    TFLite's converter, the source model's prediction and the interpreter's, the cache write.
    The first one also imports TensorFlow.
    """
    import run

    marks = []
    for line in m.stderr.splitlines():
        found = run._PROGRESS.match(line)
        if found:
            marks.append((float(found.group(1)), found.group(2)))
    build_s = float(report["build"]["seconds"])
    out: dict[str, float] = {"process start, imports, manifest, exit": m.wall_s - build_s}
    if marks:
        out["fingerprints, before the first conversion"] = marks[0][0]
    first = True
    for i, (at, text) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else build_s
        label = text
        if text.startswith("converting "):
            label = "convert + verify " + text.split()[1] + (" (+ import TF)" if first else "")
            first = False
        out[label] = out.get(label, 0.0) + max(0.0, end - at)
    return out


def summarize(runs: list[dict[str, Any]], stamp: dict[str, Any], median: Any) -> dict[str, Any]:
    metrics = ("wall_s", "maxrss_mb", "tree_mb")
    conv_sides = [r["converter"] for r in runs]
    sides = {
        "converter": {
            "wall_s": median([sum(v["wall_s"] for v in c.values()) for c in conv_sides]),
            **{m: median([max(v[m] for v in c.values()) for c in conv_sides]) for m in metrics[1:]},
        },
        **{
            f"bundler_{phase}": {m: median([r["bundler"][phase][m] for r in runs]) for m in metrics}
            for phase in ("cold", "rebuild")
        },
    }
    per_model = []
    for case in CASES:
        convs = [r["converter"][case.name] for r in runs]
        ours = [r["bundler"]["models"][case.name] for r in runs]
        errors = [o["max_abs_error"] for o in ours]
        per_model.append(
            {
                **asdict(case),
                "converter_wall_s": median([c["wall_s"] for c in convs]),
                "converter_maxrss_mb": median([c["maxrss_mb"] for c in convs]),
                "converter_bytes": convs[-1]["bytes"],
                "bundler_bytes": ours[-1]["bytes"],
                # Each repetition compares the two files it made.
                "identical": all(
                    c["sha256"] == o["sha256"] for c, o in zip(convs, ours, strict=True)
                ),
                "converter_deterministic": len({c["sha256"] for c in convs}) == 1,
                "bundler_deterministic": len({o["sha256"] for o in ours}) == 1,
                "converter_sha256": convs[-1]["sha256"],
                "bundler_sha256": ours[-1]["sha256"],
                "max_abs_error": None if None in errors else max(errors),
                "ops": ours[-1]["ops"],
                "quantization": ours[-1]["quantization"],
            }
        )
    cold = sides["bundler_cold"]["wall_s"]
    conv = sides["converter"]["wall_s"]
    rebuild = sides["bundler_rebuild"]["wall_s"]
    floats = [m for m in per_model if m["quantize"] == "none"]
    worst = [m["max_abs_error"] for m in floats]
    misses = sum(not r["bundler"]["rebuild_cache_hit"] for r in runs)
    different = [m["name"] for m in per_model if not m["identical"]]
    goals = [
        {
            "goal": f"cold build <= {GOAL_COLD}x the converter calls' wall time",
            "value": cold / conv,
            "unit": "x",
            "met": cold / conv <= GOAL_COLD,
        },
        {
            "goal": "same .tflite bytes as TFLite's converter, same options, every model",
            "value": float(len(per_model) - len(different)),
            "unit": f" of {len(per_model)}",
            "met": not different,
            "note": f"differ: {', '.join(different)}" if different else "all byte-identical",
        },
        {
            "goal": f"every float32 .tflite within {GOAL_ERROR:g} of its source",
            "value": float("nan") if None in worst else max(worst),
            "unit": " max abs error",
            "met": None not in worst and max(worst) <= GOAL_ERROR,
        },
        {
            "goal": "rebuild, nothing changed, vs cold build (report only)",
            "value": rebuild / cold,
            "unit": "x",
            "met": None,
            "note": f"{misses} rebuild(s) not cache hits" if misses else "all cache hits",
        },
        {
            "goal": "peak RSS, cold build vs the largest converter call (report only)",
            "value": sides["bundler_cold"]["maxrss_mb"] / sides["converter"]["maxrss_mb"],
            "unit": "x",
            "met": None,
        },
    ]
    breakdown: dict[str, list[float]] = {}
    for r in runs:
        for label, seconds in r["bundler"]["breakdown"].items():
            breakdown.setdefault(label, []).append(seconds)
    return {
        "repeat": len(runs),
        "cases": [asdict(c) for c in CASES],
        "prepared": stamp,
        "median": sides,
        "per_model": per_model,
        "cold_breakdown_median_s": {k: median(v) for k, v in breakdown.items()},
        "goals": goals,
        "runs": runs,
    }


def print_table(results: dict[str, Any]) -> None:
    import run

    med = results["median"]
    conv = med["converter"]["wall_s"]
    n = results["repeat"]
    cases = len(results["cases"])
    print(
        f"\nmodel bundler (target tflite) vs TFLite's Python converter: {cases} models, "
        f"median of {n} run{'s' if n > 1 else ''}, {os.cpu_count()} CPUs\n"
    )
    header = f"{'':44} {'wall s':>7} {'x conv':>7} {'peak RSS MB':>11} {'tree MB':>8}"
    print(header)
    print("-" * len(header))
    for label, key in (
        (f"converter ({cases} processes, summed)", "converter"),
        ("bundler cold build (verified)", "bundler_cold"),
        ("bundler rebuild, nothing changed", "bundler_rebuild"),
    ):
        s = med[key]
        print(
            f"{label:44} {s['wall_s']:7.2f} {s['wall_s'] / conv:6.3f}x "
            f"{s['maxrss_mb']:11.0f} {s['tree_mb']:8.0f}"
        )

    print("\nper model (converter: one process each; same bytes: sha256 of the .tflite files)")
    header = (
        f"{'model':15} {'source':11} {'quant':5} {'conv s':>6} {'conv MB':>7} "
        f"{'conv bytes':>11} {'bundler bytes':>13} {'same bytes':>10} {'ops':>4} "
        f"{'tflite err':>10}"
    )
    print(header)
    print("-" * len(header))
    for m in results["per_model"]:
        err = "-" if m["max_abs_error"] is None else f"{m['max_abs_error']:.1e}"
        print(
            f"{m['name']:15} {m['source']:11} {m['quantize']:5} {m['converter_wall_s']:6.2f} "
            f"{m['converter_maxrss_mb']:7.0f} {m['converter_bytes']:11,} "
            f"{m['bundler_bytes']:13,} {'yes' if m['identical'] else 'NO':>10} {m['ops']:4} "
            f"{err:>10}"
        )
    for m in results["per_model"]:
        for side in ("converter", "bundler"):
            if not m[f"{side}_deterministic"]:
                print(f"  note: the {side}'s {m['name']}.tflite differed between repetitions")

    print("\nwhere a cold build spends its time (from its progress lines), median s")
    for label, seconds in results["cold_breakdown_median_s"].items():
        print(f"  {seconds:7.2f}  {label}")

    print("\ngoals")
    for g in results["goals"]:
        mark = "report" if g["met"] is None else ("met" if g["met"] else "MISSED")
        value = f"{g['value']:.3g}" if g["unit"] == " max abs error" else f"{g['value']:.3f}"
        if g["unit"].startswith(" of"):
            value = f"{g['value']:.0f}"
        note = f"  ({g['note']})" if g.get("note") else ""
        print(f"  [{mark:^6}] {g['goal']}: {value}{g['unit']}{note}")
    run.print_run_notes(results)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert-one"]:
        return convert_one_main(argv[1:])
    import run

    epilog = "`tflite.py convert-one --help`: the baseline's one converter call."
    return run.bench_main(bench, __doc__, argv, epilog)


if __name__ == "__main__":
    sys.exit(main())
