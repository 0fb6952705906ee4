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
from collections.abc import Sequence
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
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    err = Console(stderr=True, highlight=False)
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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and logs")
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
    build.add_argument(
        "manifest", nargs="?", default="bundle.toml", help="the manifest (default: ./bundle.toml)"
    )
    build.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    init = sub.add_parser(
        "init",
        parents=[common],
        help="write a starter bundle.toml and a tiny model",
        description="Write a starter bundle.toml and a tiny model, so `bundler build` works.",
    )
    init.add_argument("dir", nargs="?", default=".", help="the folder (default: .)")
    return parser


def _build(args: argparse.Namespace, err: Console) -> int:
    from bundler import build, manifest

    config = manifest.load(args.manifest)
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
        # Pipes and CI logs get a table as wide as it needs, not 80 columns.
        console = Console(highlight=False)
        if not console.is_terminal:
            console = Console(highlight=False, width=120)
        _print_report(console, result, config.project.out)
    return EXIT_OK


def _print_report(out: Console, result: Any, out_dir: Path) -> None:
    report = result.report
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
        "",
    ):
        left = column in ("model", "format", "")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for m in report["models"]:
        errors = [e for e in m["max_abs_error"].values() if e is not None]
        error_text = f"{max(errors):.1e}" if errors else "-"
        quantize = m["quantize"] if isinstance(m["quantize"], str) else "mixed"
        state = "converted" if m["name"] in result.converted else "cached"
        table.add_row(
            m["name"],
            m["format"],
            quantize,
            f"{m['params']:,}",
            _size(m["weight_bytes"]),
            _size(m["brotli_bytes"]),
            str(m["shards"]),
            error_text,
            state,
        )
    out.print(table)
    versions = sorted({v for m in report["models"] for v in m["max_abs_error"]})
    if versions:
        out.print(
            f"max error: largest absolute difference from the source model, "
            f"over tfjs {', '.join(versions)}"
        )
    for warning in report["warnings"]:
        out.print(f"[yellow]warning:[/] {_escape(warning)}")
    where = _escape(str(out_dir))
    if result.written:
        out.print(f"wrote {where} in {result.seconds:.1f}s")
    else:
        out.print(f"{where} is up to date ({result.seconds:.1f}s, nothing written)")


def _init(args: argparse.Namespace, err: Console) -> int:
    from bundler import starter

    written = starter.write(Path(args.dir))
    for path in written:
        err.print(f"wrote {_escape(str(path))}")
    err.print(f"next: bundler build {_escape(str(written[0]))}")
    return EXIT_OK


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.2f} MB"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
