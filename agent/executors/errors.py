"""Errors raised by executors before a step runs.

    ExecutorError
    ├── StepSpecError        a step's fields are missing or malformed (names the field)
    └── UnknownStepKindError no executor is registered for the step's kind

Failures *while* a step runs are not exceptions: they are ``StepOutcome(status="failed")``.
"""

from __future__ import annotations

__all__ = ["ExecutorError", "StepSpecError", "UnknownStepKindError"]


class ExecutorError(Exception):
    """Base of executor errors."""


class StepSpecError(ExecutorError):
    """A step spec is invalid; the message names the step and the field."""


class UnknownStepKindError(ExecutorError):
    """No executor handles this step kind."""
