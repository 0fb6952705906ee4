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
    """A model source cannot be read or converted; `model` names it once it is known."""

    def __init__(
        self, message: str, *, model: str | None = None, problems: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, problems=problems)
        self.model = model

    def __str__(self) -> str:
        text = super().__str__()
        return f'model "{self.model}": {text}' if self.model else text

    def of(self, model: str) -> ModelError:
        """The same error, naming `model` (kept if it already names one)."""
        if self.model is not None:
            return self
        named = ModelError(self.message, model=model, problems=self.problems)
        named.__cause__ = self.__cause__
        return named


class VerifyError(BundlerError):
    """The converted model does not load or run in the tfjs runtime."""


class PlanError(BundlerError):
    """The bundle cannot fit the platform limits."""


class ToolError(BundlerError):
    """A tool the build needs (node, npm) is missing or failed."""
