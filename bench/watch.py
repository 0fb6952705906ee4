"""`make bench`, the watch part: from saving a file to the new bundle in place (`bundler watch`).

What runs (see bench/README.md, "The watch benchmark"):

- A manifest of three models, bench/work/watch/bundle.toml (`targets = ["web"]`, verified, as
  in the main bench): MobileNetV2 0.35 `.h5` → graph, MobileNetV2 0.35 SavedModel → graph and
  the MLP `.h5` → layers, all `quantize = "none"`. The models are bench/prepare.py's.
- Each repetition:
  1. **cold build**: `bundler build --json` in a fresh subprocess, the cache and the output
     folder removed first (as in the main bench). It also leaves the cache the watcher starts
     from.
  2. A `bundler.watch.Watcher` starts in this process, on its own thread, with a `stop` event
     and `templates=` a copy of templates/ in bench/work/watch/templates/ (the repository's
     templates are never edited). Its first build reuses every model and writes nothing.
  3. **template edit**: a comment line appended to the copy of `init/bundle.toml.j2`. No
     template goes into a bundle today, so the rebuild reuses every model and the bundle does
     not change: the time runs to the watcher's `Built` event.
  4. **quantization change**: the manifest's `quantize = "none"` of `mnv2_035_h5` becomes
     `"uint8"` (a fingerprint never built before). The time runs to the moment
     `dist/bundle-report.json` is replaced (the swap of the output folder), polled every 2 ms;
     the `Built` event is recorded too.
  5. The watcher is stopped (the next cold build must not be watched).
- In the first repetition only, before the timed edits, one quantization change
  (`mnv2_035_h5` to float16, then back to none, a cache hit) imports TensorFlow into this
  process, as the first conversion of a `bundler watch` session does. It is reported on its
  own line, not in the median; the timed changes then measure a watcher with TensorFlow loaded.
- Every save is a write, flush and fsync of the whole file; the clock starts when fsync
  returns. After each rebuild the bench waits 1 s for any further rebuild (there should be
  one rebuild per save) and reports what each rebuild converted (only the changed model
  should be).

Medians over `--repeat N` (default 3) repetitions; each as a ratio to the median cold build.
Results: a table on stdout, the `watch` key of bench/work/results.json (other keys are kept),
the watcher's progress and events in bench/work/logs/watch.log. Nothing is asserted about the
times; the exit status is 1 only when a build fails.

Usage: .venv/bin/python bench/watch.py [--repeat N]   (bench/run.py runs it after its tables)
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from run import (
    BENCH,
    CASES,
    Manifest,
    bundler_build,
    manifest,
    median,
    merge_results,
    prepare_models,
    say,
    source_digest,
    versions,
)

from bundler.build import REPORT_FILE
from bundler.dev import watch as bundler_watch
from bundler.render import TEMPLATES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow loads later, in this process
os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")

# The manifest: three of the main bench's builds; the quantization change is on the first.
WATCH_CASES = tuple(c for c in CASES if c.name in ("mnv2_035_h5", "mnv2_035_sm", "mlp_layers"))
CHANGED = "mnv2_035_h5"
QUANT_FROM, QUANT_TO = "none", "uint8"
QUANT_WARMUP = "float16"  # the first change, which imports TensorFlow
TEMPLATE = Path("init") / "bundle.toml.j2"  # inside the copy of templates/

POLL_S = 0.002  # how often bundle-report.json is looked at while a rebuild runs
QUIET_S = 1.0  # after a rebuild, how long to wait for another (there should be none)
BUILD_TIMEOUT_S = 300.0


# --- saving a file and waiting for the bundle ------------------------------------------------


def save(path: Path, text: str) -> float:
    """Write `path` whole, flush and fsync it; return the clock when fsync returned."""
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
        saved = time.perf_counter()
    return saved


def signature(path: Path) -> tuple[int, int, int] | None:
    """What tells a replaced file: inode, mtime and size (the build swaps the whole folder)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Session:
    """One `Watcher` on its own thread, its events queued with the clock they arrived at."""

    def __init__(self, man: Manifest, templates: Path, log: TextIO) -> None:
        self.man = man
        self.log = log
        self.events: queue.Queue[tuple[float, bundler_watch.Event]] = queue.Queue()
        self.stop = threading.Event()
        self.watcher = bundler_watch.Watcher(
            man.path, on_event=self._on_event, templates=templates, progress=self._progress
        )
        self.thread = threading.Thread(target=self.watcher.run, args=(self.stop,), daemon=True)
        self.clock = time.perf_counter()

    def _on_event(self, event: bundler_watch.Event) -> None:
        now = time.perf_counter()
        self.events.put((now, event))
        self.log.write(f"{now - self.clock:9.3f} event {_describe(event)}\n")

    def _progress(self, text: str) -> None:
        self.log.write(f"{time.perf_counter() - self.clock:9.3f} progress {text}\n")

    def __enter__(self) -> Session:
        self.thread.start()
        _, built = self.wait_for_build(time.perf_counter())
        say(
            f"  watcher started: first build {built.result.seconds:.2f} s, converted "
            f"{len(built.result.converted)}, reused {len(built.result.reused)}"
        )
        self.settle()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        if self.thread.is_alive():
            say("  WARNING: the watcher did not stop within 30 s")

    def wait_for_build(self, since: float) -> tuple[float, bundler_watch.Built]:
        """The next Built event and its clock; exits the bench on a Failed one."""
        while True:
            try:
                at, event = self.events.get(timeout=max(0.0, since + BUILD_TIMEOUT_S - _now()))
            except queue.Empty:
                sys.exit(f"no build within {BUILD_TIMEOUT_S:.0f} s; see the watch log")
            if isinstance(event, bundler_watch.Built):
                return at, event
            if isinstance(event, bundler_watch.Failed):
                sys.exit(f"a watched build failed: {type(event.error).__name__}: {event.error}")

    def settle(self) -> list[bundler_watch.Event]:
        """Wait QUIET_S; any rebuild that starts meanwhile is waited for and returned."""
        extra: list[bundler_watch.Event] = []
        deadline = _now() + QUIET_S
        while (left := deadline - _now()) > 0:
            try:
                _, event = self.events.get(timeout=left)
            except queue.Empty:
                break
            extra.append(event)
            if isinstance(event, bundler_watch.Started):
                _, built = self.wait_for_build(_now())
                extra.append(built)
                deadline = _now() + QUIET_S
        return extra

    def edit(self, kind: str, path: Path, text: str) -> dict[str, Any]:
        """Save `path` with `text`; time the rebuild it starts."""
        stray = self.settle()
        if stray:
            say(f"  WARNING: {len(stray)} event(s) before the {kind} save: {_describe(stray[0])}")
        report = self.man.out / REPORT_FILE
        before = signature(report)
        self.log.write(f"{_now() - self.clock:9.3f} save {kind}: {path}\n")
        saved = save(path, text)
        started_at: float | None = None
        changed_at: float | None = None
        built: bundler_watch.Built | None = None
        built_at = 0.0
        while built is None:
            if changed_at is None and signature(report) != before:
                changed_at = _now()
            try:
                at, event = self.events.get(timeout=POLL_S)
            except queue.Empty:
                if _now() - saved > BUILD_TIMEOUT_S:
                    sys.exit(f"{kind}: no build within {BUILD_TIMEOUT_S:.0f} s")
                continue
            if isinstance(event, bundler_watch.Started) and started_at is None:
                started_at = at
            elif isinstance(event, bundler_watch.Built):
                built, built_at = event, at
            elif isinstance(event, bundler_watch.Failed):
                sys.exit(f"{kind}: the build failed: {type(event.error).__name__}: {event.error}")
        if changed_at is None and signature(report) != before:
            changed_at = built_at  # swapped within the last poll interval before Built
        extra = self.settle()
        result = built.result
        return {
            "kind": kind,
            "saved_to_started_s": (started_at or built_at) - saved,
            "saved_to_built_s": built_at - saved,
            "saved_to_report_s": None if changed_at is None else changed_at - saved,
            "report_changed": changed_at is not None,
            "build_s": result.seconds,
            "converted": list(result.converted),
            "reused": list(result.reused),
            "written": result.written,
            "changed": [_rel(p) for p in built.changed],
            "rebuilds": 1 + sum(isinstance(e, bundler_watch.Started) for e in extra),
        }


def _now() -> float:
    return time.perf_counter()


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(BENCH.parent))
    except ValueError:
        return str(path)


def _describe(event: bundler_watch.Event) -> str:
    if isinstance(event, bundler_watch.Started):
        return f"Started changed={[_rel(p) for p in event.changed]}"
    if isinstance(event, bundler_watch.Built):
        r = event.result
        return (
            f"Built in {r.seconds:.3f} s converted={r.converted} reused={r.reused} "
            f"written={r.written}"
        )
    if isinstance(event, bundler_watch.Failed):
        return f"Failed {type(event.error).__name__}: {event.error}"
    return f"Watching {len(event.targets)} targets"


# --- the edits ------------------------------------------------------------------------------


def with_quantize(text: str, model: str, quantize: str) -> str:
    """The manifest text with one model's `quantize` line changed."""
    block = re.compile(rf'(name = "{re.escape(model)}"\n(?:[^\[\n][^\n]*\n)*?quantize = )"[^"]*"')
    new, count = block.subn(lambda m: f'{m.group(1)}"{quantize}"', text)
    if count != 1:
        raise RuntimeError(f"no quantize line for {model} in the manifest")
    return new


@dataclass
class Edits:
    """The files the bench edits and what they hold now."""

    man: Manifest
    template: Path
    edits: int = 0

    def template_edit(self, session: Session) -> dict[str, Any]:
        self.edits += 1
        text = self.template.read_text(encoding="utf-8") + f"{{# bench edit {self.edits} #}}\n"
        return session.edit("template edit", self.template, text)

    def quantize(self, session: Session, quantize: str) -> dict[str, Any]:
        text = with_quantize(self.man.path.read_text(encoding="utf-8"), CHANGED, quantize)
        return session.edit(f"quantize {quantize}", self.man.path, text)


def _show(edit: dict[str, Any]) -> None:
    took = edit["saved_to_report_s"] if edit["report_changed"] else edit["saved_to_built_s"]
    end = "bundle-report.json" if edit["report_changed"] else "Built (bundle unchanged)"
    say(
        f"  {edit['kind']:22} {took:6.2f} s to {end}; build {edit['build_s']:.2f} s, "
        f"converted {edit['converted'] or 'nothing'}, {edit['rebuilds']} rebuild(s)"
    )


# --- the run --------------------------------------------------------------------------------


def repetition(rep: int, man: Manifest, templates: Path, logs: Path, log: TextIO) -> dict[str, Any]:
    base = man.path.read_text(encoding="utf-8")
    man.path.write_text(with_quantize(base, CHANGED, QUANT_FROM), encoding="utf-8")
    man.clean()
    cold, report = bundler_build(man, "cold build", logs / f"watch-{rep}-cold.log")
    run: dict[str, Any] = {
        "repetition": rep,
        "cold_s": cold.wall_s,
        "cold_converted": report["build"]["converted"],
        "load1": cold.load1,
    }
    edits = Edits(man, templates / TEMPLATE)
    log.write(f"\n--- repetition {rep}\n")
    with Session(man, templates, log) as session:
        if rep == 1:
            first = edits.quantize(session, QUANT_WARMUP)
            _show(first)
            back = edits.quantize(session, QUANT_FROM)
            _show(back)
            run["first_quantize"] = first
            run["restore_quantize"] = back
        run["template"] = edits.template_edit(session)
        _show(run["template"])
        run["quantize"] = edits.quantize(session, QUANT_TO)
        _show(run["quantize"])
    return run


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    cold = median([r["cold_s"] for r in runs])
    template = median([r["template"]["saved_to_built_s"] for r in runs])
    quant_times = [r["quantize"]["saved_to_report_s"] for r in runs]
    quant = median([t for t in quant_times if t is not None])
    first = runs[0]["first_quantize"]
    first_s = first["saved_to_report_s"] or first["saved_to_built_s"]
    return {
        "cold_build_s": cold,
        "template_edit_to_built_s": template,
        "template_edit_ratio": template / cold,
        "quantize_change_to_bundle_s": quant,
        "quantize_change_ratio": quant / cold,
        "first_quantize_change_s": first_s,
        "first_quantize_change_ratio": first_s / cold,
        "template_saved_to_started_s": median([r["template"]["saved_to_started_s"] for r in runs]),
        "template_build_s": median([r["template"]["build_s"] for r in runs]),
        "quantize_saved_to_started_s": median([r["quantize"]["saved_to_started_s"] for r in runs]),
        "quantize_build_s": median([r["quantize"]["build_s"] for r in runs]),
        "quantize_report_to_built_s": median(
            [
                r["quantize"]["saved_to_built_s"] - r["quantize"]["saved_to_report_s"]
                for r in runs
                if r["quantize"]["saved_to_report_s"] is not None
            ]
        ),
    }


def _converted(edits: list[dict[str, Any]], expected: list[str]) -> str:
    """What the rebuilds converted, the same in every repetition or each listed."""
    seen = sorted({", ".join(e["converted"]) or "nothing" for e in edits})
    text = " | ".join(seen)
    if any(e["converted"] != expected for e in edits):
        text += f"  (EXPECTED {', '.join(expected) or 'nothing'})"
    if any(e["rebuilds"] != 1 for e in edits):
        text += f"  ({max(e['rebuilds'] for e in edits)} rebuilds for one save)"
    return text


def print_table(results: dict[str, Any]) -> None:
    med = results["median"]
    runs = results["runs"]
    n = results["repeat"]
    names = [c["name"] for c in results["cases"]]
    print(
        f"\nbundler watch: from a save to the new bundle, {len(names)} models "
        f"({', '.join(names)}), median of {n} run{'s' if n > 1 else ''}, "
        f"{os.cpu_count()} CPUs\n"
    )
    header = f"{'':44} {'s':>6} {'x cold':>7}  converted in the rebuild"
    print(header)
    print("-" * 100)
    cold_conv = sorted({", ".join(r["cold_converted"]) for r in runs})
    rows = [
        ("cold `bundler build` (subprocess, no cache)", med["cold_build_s"], " | ".join(cold_conv)),
        (
            "template edit → Built (bundle unchanged)",
            med["template_edit_to_built_s"],
            _converted([r["template"] for r in runs], []),
        ),
        (
            f"quantize {CHANGED} {QUANT_FROM}→{QUANT_TO} → bundle",
            med["quantize_change_to_bundle_s"],
            _converted([r["quantize"] for r in runs], [CHANGED]),
        ),
    ]
    for label, seconds, converted in rows:
        print(f"{label:44} {seconds:6.2f} {seconds / med['cold_build_s']:6.3f}x  {converted}")
    first = runs[0]["first_quantize"]
    print(
        f"{'  (first change of the session, imports TF)':44} "
        f"{med['first_quantize_change_s']:6.2f} {med['first_quantize_change_ratio']:6.3f}x  "
        f"{_converted([first], [CHANGED])}; once, not in the median"
    )
    print(
        f"\nof which: save → rebuild starts (debounce {bundler_watch.DEBOUNCE_SECONDS} s) "
        f"{med['template_saved_to_started_s']:.2f} s / {med['quantize_saved_to_started_s']:.2f} s;"
        f" build() {med['template_build_s']:.2f} s / {med['quantize_build_s']:.2f} s "
        "(template / quantize)"
    )
    source = results.get("bundler_source", {})
    if source.get("changed_during_run"):
        print(
            "\nWARNING: the bundler's source changed during this run (someone edited bundler/); "
            "run it again"
        )
    load = results["machine"]["loadavg_before"]
    if load[0] > (os.cpu_count() or 1) * 0.75:
        print(
            f"\nnote: load average {load[0]:.1f} before the run on {os.cpu_count()} CPUs: other "
            "work shared the machine, absolute times are inflated (ratios less so)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--work", type=Path, default=BENCH / "work", help="work folder (default bench/work)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    work: Path = args.work.resolve()
    models = work / "models"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = prepare_models(models)

    root = work / "watch"
    shutil.rmtree(root, ignore_errors=True)  # only ever holds what this script wrote
    templates = root / "templates"
    shutil.copytree(TEMPLATES, templates)
    man = manifest(root / "bundle.toml", WATCH_CASES, models, "dist", ".bundler-cache", True)
    warm = manifest(
        root / "warmup" / "bundle.toml",
        tuple(c for c in CASES if c.name == "mlp_layers"),
        models,
        "dist",
        ".bundler-cache",
        True,
    )
    say("watch bench: warm-up build of the MLP (untimed)")
    warm.clean()
    bundler_build(warm, "warm-up build", logs / "watch-warmup.log")

    load_before = os.getloadavg()
    digest_before = source_digest()
    started = time.time()
    runs = []
    with (logs / "watch.log").open("w", encoding="utf-8", buffering=1) as log:
        for rep in range(1, args.repeat + 1):
            say(f"watch repetition {rep}/{args.repeat}")
            runs.append(repetition(rep, man, templates, logs, log))
    digest_after = source_digest()

    results: dict[str, Any] = {
        "repeat": len(runs),
        "cases": [
            {"name": c.name, "net": c.net, "source": c.source, "format": c.format}
            for c in WATCH_CASES
        ],
        "changed_model": CHANGED,
        "quantize_change": [QUANT_FROM, QUANT_TO],
        "template_edited": str(TEMPLATE),
        "template_end": "Built event (no template goes into the bundle; it does not change)",
        "quantize_end": f"{REPORT_FILE} replaced in the output folder",
        "debounce_s": bundler_watch.DEBOUNCE_SECONDS,
        "prepared_version": stamp.get("version"),
        "median": summarize(runs),
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
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
    path = merge_results(work, "watch", results)
    print_table(results)
    print(f"\nwrote the `watch` key of {path}; log in {logs / 'watch.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
