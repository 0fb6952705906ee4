"""`make bench`, the runtime part: the tfjs runtime each bundle ships, against stock tfjs.

Two bundles of the example's models (example_site/bundle.toml), each built with
`bundler build` (targets wechat and web; the bundler's caches make later runs quick):

- `graph`: the example's two graph models only;
- `graph+layers`: the whole example (two graph models and a LayersModel).

For each, printed and written to the `runtime` key of bench/work/results.json:

- WeChat: `tfjs/index.js` as generated (minified; the compiler is told to leave it as it is)
  against stock tfjs 3.21's runtime subpackage after DevTools' "Build npm" and Tencent's
  compile, 1,633,779 bytes (measured with miniprogram-ci for issue 9; STOCK_WECHAT_BYTES).
  Goals: ≤ 0.30× (graph), ≤ 0.50× (graph+layers).
- Web: the runtime file with brotli (as served) against @tensorflow/tfjs 4.22's whole
  tf.min.js with brotli 11, measured here from the npm package (291,305 bytes when written).
  Goals: ≤ 0.40× (graph), ≤ 0.60× (graph+layers). And the report's first-visit bytes.

Sizes are bytes, not times: one run is exact. Exit status 1 when a goal is missed.

Usage: .venv/bin/python bench/runtime_size.py [--work bench/work]   (bench/run.py runs it)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import brotli
from run import BENCH, BUNDLER, checked, measure, merge_results, say

from bundler import limits
from bundler.runtimes import ensure_tfjs

ROOT = BENCH.parent
EXAMPLE = ROOT / "example_site"
STOCK_WECHAT_BYTES = 1_633_779  # stock tfjs 3.21 runtime subpackage, after Build npm + compile
GOALS = {  # (bundle, target) → the largest ratio to stock
    ("graph", "wechat"): 0.30,
    ("graph+layers", "wechat"): 0.50,
    ("graph", "web"): 0.40,
    ("graph+layers", "web"): 0.60,
}
LAYERS_MODEL = "digits_layers"


def bundle(work: Path, name: str, keep_layers: bool) -> Path:
    """A copy of the example, with or without its LayersModel; built; its dist folder."""
    site = work / "runtime" / name.replace("+", "_")
    if site.exists():
        shutil.rmtree(site / "dist", ignore_errors=True)
    else:
        shutil.copytree(EXAMPLE, site, ignore=shutil.ignore_patterns("dist", ".bundler-cache"))
    text = (EXAMPLE / "bundle.toml").read_text(encoding="utf-8")
    if not keep_layers:
        blocks = re.split(r"(?=^# .*\n\[\[models\]\])", text, flags=re.MULTILINE)
        text = "".join(b for b in blocks if f'name = "{LAYERS_MODEL}"' not in b)
    (site / "bundle.toml").write_text(text, encoding="utf-8")
    log = work / "logs" / f"runtime-{site.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    m = checked(measure([BUNDLER, "build", site / "bundle.toml"], cwd=site), f"build {name}")
    log.write_text(m.stdout + m.stderr, encoding="utf-8")
    return site / "dist"


def sizes(dist: Path) -> dict[str, Any]:
    report = json.loads((dist / "bundle-report.json").read_text(encoding="utf-8"))
    web_file = dist / "web" / report["web"]["tfjs"]
    return {
        "wechat_bytes": (dist / "wechat" / "tfjs" / "index.js").stat().st_size,
        "web_bytes": web_file.stat().st_size,
        "web_brotli_bytes": len((web_file.parent / (web_file.name + ".br")).read_bytes()),
        "first_visit_brotli_bytes": report["web"]["first_visit_brotli_bytes"],
        "models": [m["name"] for m in report["models"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--work", type=Path, default=BENCH / "work")
    args = parser.parse_args(argv)
    work: Path = args.work.resolve()
    stock_js = (ensure_tfjs("4.22.0") / "node_modules/@tensorflow/tfjs/dist/tf.min.js").read_bytes()
    stock_web = len(brotli.compress(stock_js, quality=limits.TEXT_BROTLI_QUALITY))
    results: dict[str, Any] = {
        "stock": {"wechat_bytes": STOCK_WECHAT_BYTES, "web_brotli_bytes": stock_web},
        "bundles": {},
        "goals": {},
    }
    failed = False
    print("\nbundle         target   runtime bytes   stock bytes   ratio   goal")
    for name, keep in (("graph", False), ("graph+layers", True)):
        say(f"runtime: building the example as '{name}'")
        got = sizes(bundle(work, name, keep))
        results["bundles"][name] = got
        for target, mine, stock in (
            ("wechat", got["wechat_bytes"], STOCK_WECHAT_BYTES),
            ("web", got["web_brotli_bytes"], stock_web),
        ):
            ratio = mine / stock
            goal = GOALS[(name, target)]
            ok = ratio <= goal
            failed |= not ok
            results["goals"][f"{name} {target}"] = {
                "ratio": round(ratio, 4),
                "goal": goal,
                "ok": ok,
            }
            print(
                f"{name:14} {target:6} {mine:>15,} {stock:>13,}   {ratio:.3f}   ≤ {goal:.2f}"
                f"{'' if ok else '  MISSED'}"
            )
        print(f"{'':14} web first visit, brotli: {got['first_visit_brotli_bytes']:,} bytes")
    path = merge_results(work, "runtime", results)
    print(f"wrote the `runtime` key of {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
