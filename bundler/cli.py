"""The command line: parse, load the manifest, call the library, draw the terminal.

Nothing else in the package knows the terminal. Exit status: 0 built, 1 the build failed,
2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bundler import __version__
from bundler.errors import BundlerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `bundler` command; return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # soft_wrap: a message is one line however long; the terminal may fold it, we do not.
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "build":
            return _build(args, err)
        if args.command == "init":
            return _init(args, err)
        if args.command == "watch":
            return _watch(args, err)
        if args.command == "serve":
            return _serve(args, err)
    except BundlerError as e:
        if args.verbose:
            err.print_exception()
        err.print(f"[bold red]error:[/] {_escape(str(e))}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as e:  # a bug of ours: say so plainly, keep the traceback for -v
        if args.verbose:
            err.print_exception()
        else:
            err.print(
                f"[bold red]internal error:[/] {type(e).__name__}: {_escape(str(e))}\n"
                "Run again with -v for the traceback, and please report it."
            )
        return EXIT_FAILED
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    # -v goes before or after the command; the command's copy must not reset the top one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and logs",
    )
    parser = argparse.ArgumentParser(
        prog="bundler",
        description="Ship TensorFlow/Keras models, converted, quantized and sharded, "
        "in WeChat mini-programs and static web sites.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"bundler {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    build = sub.add_parser(
        "build",
        parents=[common],
        help="convert, verify and write the bundle",
        description="Read the manifest, convert every model, verify it in tfjs, write the bundle.",
    )
    _manifest_argument(build)
    build.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    build.add_argument(
        "--require-cache",
        action="store_true",
        help="fail when the shared cache (an s3:// cache_dir) cannot be used, instead of "
        "converting here",
    )
    init = sub.add_parser(
        "init",
        parents=[common],
        help="write a starter bundle.toml and a tiny model",
        description="Write a starter bundle.toml and a tiny model, so `bundler build` works.",
    )
    init.add_argument("dir", nargs="?", default=".", help="the folder (default: .)")
    init.add_argument(
        "--appid",
        help="your mini-program's appid (default: asked for when stdin is a terminal, "
        'else the "touristappid" placeholder, under which tfjsPlugin does not run)',
    )
    watch = sub.add_parser(
        "watch",
        parents=[common],
        help="build, then rebuild on every change",
        description="Build, then rebuild on every change to the manifest, a model source or a "
        "template. A failed rebuild keeps the last good bundle and says why. Ctrl-C stops.",
    )
    _manifest_argument(watch)
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="build, watch, and serve the web bundle on localhost with live reload",
        description="Build, then serve <out>/web/ on 127.0.0.1 (precompressed .br/.gz files "
        "by Accept-Encoding), rebuild on every change and reload open pages. Ctrl-C stops.",
    )
    _manifest_argument(serve)
    serve.add_argument(
        "--port", type=int, default=8000, help="the port (default: 8000; 0 takes any free port)"
    )
    return parser


def _manifest_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "manifest", nargs="?", default="bundle.toml", help="the manifest (default: ./bundle.toml)"
    )


def _build(args: argparse.Namespace, err: Console) -> int:
    from bundler import build, manifest

    config = manifest.load(args.manifest)
    if args.require_cache:
        config = manifest.requiring_cache(config)
    started = time.perf_counter()

    with err.status("building", spinner="dots") as status:

        def progress(text: str) -> None:
            elapsed = time.perf_counter() - started
            err.print(f"[dim]{elapsed:6.1f}s[/] {_escape(text)}")
            status.update(_escape(text))

        result = build.build(config, progress=progress)
    if args.json:
        sys.stdout.write(json.dumps(result.as_json(), indent=2) + "\n")
    else:
        _print_report(_stdout(), result, config.project.out)
    return EXIT_OK


def _print_report(out: Console, result: Any, out_dir: Path) -> None:
    from bundler.targets.exported import ExportReport
    from bundler.targets.web.target import WebReport
    from bundler.targets.wechat.target import WechatReport

    report = result.report
    exported = [r for r in report.target_reports.values() if isinstance(r, ExportReport)]
    kinds = {part.kind for part in exported}

    def tfjs_versions(errors: Mapping[str, Any]) -> list[str]:
        """The runtimes in a model's figures that are tfjs versions, not export targets."""
        return [key for key in errors if key not in kinds]

    tfjs = [m for m in report.models if m.tfjs is not None]
    if tfjs:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in (
            "model",
            "format",
            "quantize",
            "params",
            "weights",
            "brotli",
            "shards",
            "max error",
            "top-1",
            "",
        ):
            left = column in ("model", "format", "")
            table.add_column(column, justify="left" if left else "right", no_wrap=True)
        for m in tfjs:
            assert m.tfjs is not None
            quantize = m.quantize if isinstance(m.quantize, str) else "mixed"
            table.add_row(
                m.name,
                m.tfjs.format,
                quantize,
                f"{m.tfjs.params:,}",
                _size(m.tfjs.weight_bytes),
                _size(m.tfjs.brotli_bytes),
                str(m.tfjs.shards),
                _error(m.max_abs_error.get(v) for v in tfjs_versions(m.max_abs_error)),
                _top1(m.top1_agreement.get(v) for v in tfjs_versions(m.max_abs_error)),
                _origin(result, m.name),
            )
        out.print(table)
    for m in tfjs:
        chosen = m.tfjs.auto if m.tfjs is not None else None
        if chosen:
            mix = ", ".join(f"{len(names)} {dtype}" for dtype, names in chosen["table"].items())
            judged = chosen["judged_in_tensorflow"]
            out.print(
                f"{m.name}: quantize auto chose {mix} ({_size(chosen['weight_bytes'])}; in "
                f"TensorFlow, top-1 {_top1([judged['top1_agreement']])}, max error "
                f"{_error([judged['max_abs_error']])}); bundle-report.json lists the weights"
            )
    if exported:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("model", "target", "bytes", "ops", "weights", "max error", "top-1", ""):
            left = column in ("model", "target", "weights", "")
            table.add_column(column, justify="left" if left else "right", no_wrap=True)
        for m in report.models:
            for part in exported:
                facts = part.models[m.name]
                table.add_row(
                    m.name,
                    part.kind,
                    _size(facts["bytes"]),
                    str(facts.get("ops", "-")),
                    _escape(facts.get("quantization", "float32")),
                    _error([facts["max_abs_error"]]),
                    _top1([facts.get("top1_agreement")]),
                    _origin(result, m.name),
                )
        out.print(table)
    wechat = report.target_reports.get("wechat")
    if isinstance(wechat, WechatReport):
        packages = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("wechat package", "bytes", "limit", "used"):
            packages.add_column(column, justify="left" if column == "wechat package" else "right")
        for p in wechat.packages:
            used = p.bytes / p.limit
            packages.add_row(
                p.root,
                _size(p.bytes),
                _size(p.limit),
                f"[red]{used:.0%}[/]" if used > 1 else f"{used:.0%}",
            )
        out.print(packages)
        delivered = ", ".join(f"{m.name}: {wechat.delivery[m.name]}" for m in report.models)
        out.print(f"wechat: {_escape(str(out_dir / 'wechat'))} (delivery: {delivered})")
    web = report.target_reports.get("web")
    if isinstance(web, WebReport):
        out.print(
            f"web: {_escape(str(out_dir / web.root))} (first visit "
            f"{_size(web.first_visit_brotli_bytes)} with brotli; "
            f"models cached in {web.cache})"
        )
    for part in exported:
        first = part.models[report.models[0].name]["files"][0] if report.models else ""
        out.print(
            f"{part.kind}: {_escape(str(out_dir / part.kind))} (one folder per model: "
            f"{_escape(first.split('/', 1)[-1])}, ...)"
        )
    for target, rt in report.runtimes.items():
        out.print(
            f"tfjs runtime for {target}: {_size(rt['bytes'])}, tfjs {rt['tfjs_version']}, "
            f"{len(rt['kernels'])} kernels (bundle-report.json lists them)"
        )
    versions = sorted({v for m in report.models for v in tfjs_versions(m.max_abs_error)})
    runtimes = [f"tfjs {', '.join(versions)}"] if versions else []
    runtimes += [f"{p.kind} ({p.models[report.models[0].name]['runtime']})" for p in exported]
    if runtimes and report.models:
        out.print(
            "max error: largest absolute difference from the source model; top-1: rows whose "
            f"top class agrees with it; in {'; '.join(runtimes)}"
        )
    for warning in report.warnings:
        out.print(f"[yellow]warning:[/] {_escape(warning)}")
    where = _escape(str(out_dir))
    if result.written:
        out.print(f"wrote {where} in {result.seconds:.1f}s")
    else:
        out.print(f"{where} is up to date ({result.seconds:.1f}s, nothing written)")


def _origin(result: Any, name: str) -> str:
    """Where a model's files came from in this build."""
    if name in result.converted:
        return "converted"
    return "shared" if name in result.fetched else "cached"


def _watch(args: argparse.Namespace, err: Console) -> int:
    import threading

    from bundler.dev import watch

    out = _stdout()
    view = _WatchView(out, err, verbose=args.verbose)
    return _until_stopped(
        view,
        err,
        lambda: watch.watch(
            args.manifest, on_event=view.on_event, stop=threading.Event(), progress=view.progress
        ),
    )


def _serve(args: argparse.Namespace, err: Console) -> int:
    import threading

    from bundler.dev import serve

    if not 0 <= args.port <= 65535:
        err.print(f"[bold red]error:[/] --port {args.port} is not a port number (0 to 65535)")
        return EXIT_USAGE
    out = _stdout()
    view = _WatchView(out, err, verbose=args.verbose)

    def ready(server: Any) -> None:
        out.print(f"serving [bold]{_escape(server.url)}[/] (Ctrl-C to stop)")

    return _until_stopped(
        view,
        err,
        lambda: serve.serve(
            args.manifest,
            port=args.port,
            on_event=view.on_event,
            stop=threading.Event(),
            on_ready=ready,
            progress=view.progress,
        ),
    )


def _until_stopped(view: _WatchView, err: Console, run: Callable[[], None]) -> int:
    """Run a watching command until Ctrl-C; leave the terminal tidy."""
    try:
        run()
    except KeyboardInterrupt:
        pass
    finally:
        view.close()
    err.print("stopped")
    return EXIT_OK


class _WatchView:
    """What `bundler watch` shows: the change behind each build, its progress and outcome."""

    def __init__(self, out: Console, err: Console, verbose: bool) -> None:
        self.out = out
        self.err = err
        self.verbose = verbose
        self.status: Any = None
        self.started = 0.0
        self.watching: str | None = None  # shown after the build it was found in
        self.first = True
        self.last_table: Any = None

    def on_event(self, event: Any) -> None:
        from bundler.dev import watch

        if isinstance(event, watch.Started):
            self.started = time.perf_counter()
            if event.changed:
                clock = time.strftime("%H:%M:%S")
                self.out.print(f"\n[dim]{clock}[/] changed: {_escape(_shown(event.changed))}")
            self.status = self.err.status("building", spinner="dots")
            self.status.start()
        elif isinstance(event, watch.Watching):
            self.watching = ", ".join(
                _shown((t.path,)) + ("/" if t.tree else "") for t in event.targets
            )
        elif isinstance(event, watch.Built):
            self.close()
            self._built(event)
            self._show_watching()
        elif isinstance(event, watch.Failed):
            self.close()
            self._failed(event)
            self._show_watching()

    def progress(self, text: str) -> None:
        elapsed = time.perf_counter() - self.started
        self.err.print(f"[dim]{elapsed:6.1f}s[/] {_escape(text)}")
        if self.status is not None:
            self.status.update(_escape(text))

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def _built(self, event: Any) -> None:
        result = event.result
        table = (result.report.models, result.report.warnings)
        if table != self.last_table:  # the table says what was converted, and the time
            self.last_table = table
            _print_report(self.out, result, event.config.project.out)
            return
        done = [f"converted {', '.join(result.converted)}"] if result.converted else []
        if result.reused:
            done.append(f"reused {', '.join(result.reused)}")
        where = _shown((event.config.project.out,))
        done.append(f"wrote {where}" if result.written else f"{where} is up to date")
        summary = "; ".join(done)
        self.out.print(f"rebuilt in {result.seconds:.1f}s: {_escape(summary)}")

    def _failed(self, event: Any) -> None:
        import textwrap

        error = event.error
        if isinstance(error, BundlerError):
            reason = str(error)
        else:
            reason = f"internal error: {type(error).__name__}: {error}"
            if not self.verbose:
                reason += "\n(run with -v for the traceback, and please report it)"
        self.err.print(
            "[bold red]build failed, keeping the last good bundle:[/]\n"
            + textwrap.indent(_escape(reason), "  ")
        )
        if self.verbose:
            from rich.traceback import Traceback

            self.err.print(Traceback.from_exception(type(error), error, error.__traceback__))

    def _show_watching(self) -> None:
        if self.watching is None:
            return
        hint = " (Ctrl-C to stop)" if self.first else ""
        self.out.print(f"watching {_escape(self.watching)}{hint}")
        self.watching = None
        self.first = False


def _shown(paths: Sequence[Path], most: int = 5) -> str:
    """Paths as the user types them (relative to the working folder), at most `most`."""
    from bundler.manifest import display_path

    shown = [display_path(p) for p in paths[:most]]
    if len(paths) > most:
        shown.append(f"and {len(paths) - most} more")
    return ", ".join(shown)


def _init(args: argparse.Namespace, err: Console) -> int:
    from bundler import limits, manifest, starter

    folder = Path(args.dir)
    appid = args.appid
    if appid is not None and (problem := manifest.appid_problem(appid)) is not None:
        err.print(f"[bold red]error:[/] --appid {_escape(problem)}")
        return EXIT_USAGE
    starter.check_free(folder)  # before asking anything
    if appid is None and sys.stdin is not None and sys.stdin.isatty():
        appid = _ask_appid(err)
    written = starter.write(folder, appid=appid)
    for path in written:
        err.print(f"wrote {_escape(str(path))}")
    if starter.is_placeholder(appid):
        note = (
            f'[wechat] appid is the placeholder "{limits.TOURIST_APPID}", under which '
            f"tfjsPlugin does not run; put your mini-program's appid in {written[0]}"
        )
        err.print(f"[yellow]note:[/] {_escape(note)}")
    err.print(f"next: bundler build {_escape(str(written[0]))}")
    return EXIT_OK


def _ask_appid(err: Console) -> str | None:
    """Ask for the appid until one is given; None (Enter, or end of input): the placeholder."""
    from bundler import limits, manifest

    prompt = (
        f'WeChat appid ("wx" and 16 hex digits; Enter for the "{limits.TOURIST_APPID}" '
        "placeholder): "
    )
    while True:
        try:
            answer = err.input(_escape(prompt)).strip()
        except EOFError:
            err.print()
            return None
        if not answer:
            return None
        problem = manifest.appid_problem(answer)
        if problem is None:
            return answer
        err.print(_escape(f"{problem}; try again"))


def _stdout() -> Console:
    """The console for reports; pipes and CI logs get a table as wide as it needs."""
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console = Console(highlight=False, soft_wrap=True, width=120)
    return console


def _error(errors: Iterable[float | None]) -> str:
    known = [e for e in errors if e is not None]
    return f"{max(known):.1e}" if known else "-"


def _top1(shares: Iterable[float | None]) -> str:
    """The lowest top-1 agreement as a percentage; "-" when no output is a class vector."""
    known = [s for s in shares if s is not None]
    return f"{min(known):.1%}" if known else "-"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.2f} MB"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
