"""The few kinds of error a user can meet; each carries the message the user reads."""

from __future__ import annotations


class BundlerError(Exception):
    """A failure the user can act on. `str(err)` is the whole message; no traceback needed."""

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return "\n".join([self.message, *(f"  - {p}" for p in self.problems)])


class ManifestError(BundlerError):
    """The manifest cannot be read or is not valid; `problems` lists every one at once."""


class ModelError(BundlerError):
    """A model source cannot be read or converted."""


class VerifyError(BundlerError):
    """The converted model does not load or run in the tfjs runtime."""


class PlanError(BundlerError):
    """The bundle cannot fit the platform limits."""


class ToolError(BundlerError):
    """A tool the build needs (node, npm) is missing or failed."""
