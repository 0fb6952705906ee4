"""Golden build of example_site/: every output file's sha256 and the whole report.

The report has no timings, so nothing is left out of the comparison. After a change that is
meant to change the output, rewrite the golden file and review its diff:

    BUNDLER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_node

from bundler import build, manifest

pytestmark = [pytest.mark.slow, needs_node]

EXAMPLE_SITE = Path(__file__).resolve().parent.parent / "example_site"
GOLDEN = Path(__file__).resolve().parent / "golden" / "example_site.json"
UPDATE = os.environ.get("BUNDLER_UPDATE_GOLDEN") == "1"


def test_example_site_builds_as_golden(tmp_path: Path) -> None:
    site = tmp_path / "example_site"
    shutil.copytree(EXAMPLE_SITE, site, ignore=shutil.ignore_patterns("dist", ".bundler-cache"))
    result = build.build(manifest.load(site / "bundle.toml"))
    got = _golden(site / "dist", result.report)

    if UPDATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        return
    assert GOLDEN.is_file(), f"no {GOLDEN.name}; create it with BUNDLER_UPDATE_GOLDEN=1"
    want = json.loads(GOLDEN.read_text())
    # Files first: a list of what differs reads better than a diff of two long dicts.
    changed = sorted(
        f for f in {*want["files"], *got["files"]} if want["files"].get(f) != got["files"].get(f)
    )
    assert changed == [], f"these files differ from {GOLDEN.name}"
    assert got["report"] == want["report"]


def _golden(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    files = {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }
    return {"files": files, "report": report}
