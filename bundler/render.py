"""Jinja2 over templates/: Python passes data, templates hold the text."""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from typing import Any

import jinja2

# Installed, templates/ is the package `bundler.templates` (see pyproject.toml); in a checkout
# (an editable install) it is the repository's own templates/ folder.
_INSTALLED = Path(__file__).resolve().parent / "templates"
TEMPLATES = (
    _INSTALLED if _INSTALLED.is_dir() else Path(__file__).resolve().parent.parent / "templates"
)


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja2 environment: strict about missing values, JSON-safe `tojson`."""
    # Made once per process, so each template compiles once; `auto_reload` (on by default)
    # still recompiles a template whose file changed, as `bundler watch` needs.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.policies["json.dumps_function"] = json.dumps
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": True}
    env.filters["html_text"] = _html_text
    return env


def render(template: str, **data: Any) -> str:
    """Render one template with `data`."""
    return environment().get_template(template).render(**data)


def _html_text(value: object) -> str:
    # `e` also escapes quotes, for attributes; between tags they are safe, and stay readable
    # in the page's source.
    return html.escape(str(value), quote=False)
