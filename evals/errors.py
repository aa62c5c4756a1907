"""Errors raised by the evals package; the CLI turns each into a one-line `click.ClickException`.

::

    EvalError
     ├── SourceError        no shadow pairs, unknown dataset, unreadable golden or criteria file
     ├── JudgeError         a judge could not be called or answered something unreadable
     │    └── FamilyGuardError   a judge shares a model family with a contestant
     ├── MetricError        unknown metric, or a plug-in metric that cannot be loaded
     ├── DriftError         too little traffic, or a reference that cannot be read
     └── TriggerError       a trigger policy is invalid, or a pipeline step failed
"""

from __future__ import annotations


class EvalError(Exception):
    """Base of every error the evals package raises on purpose."""


class SourceError(EvalError):
    """The items to evaluate cannot be read."""


class JudgeError(EvalError):
    """A judge model could not be called, or its answer could not be read."""

    def __init__(self, message: str, *, judge: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.judge = judge
        self.status_code = status_code


class FamilyGuardError(JudgeError):
    """A judge belongs to the same model family as a contestant (self-preference risk)."""

    def __init__(self, message: str, *, conflicts: list[tuple[str, str, str]]) -> None:
        super().__init__(message)
        self.conflicts = conflicts
        """``(judge, contestant_model, family)`` for each refused pairing."""


class MetricError(EvalError):
    """A metric is unknown or cannot be loaded."""


class DriftError(EvalError):
    """A drift check cannot run as asked."""


class TriggerError(EvalError):
    """A retraining trigger cannot be evaluated, or a pipeline step failed."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step
