"""Errors raised by the trainer package; the CLI turns each into a one-line `click.ClickException`.

::

    TrainerError
     ├── DatasetError       no calls match, unknown dataset or version, bad filter or redactor
     ├── ExportError        unknown export format, nothing to export
     ├── TrainingError      the training stack is missing, a run failed, nothing to resume
     ├── HostedError        the fine-tuning provider refused a request or the job failed
     ├── RegistryError      unknown model version, an invalid record
     └── ServeError         a model cannot be loaded or served; a deploy the gateway refused
"""

from __future__ import annotations

TRAIN_EXTRA_HINT = "pip install 'shadowtune[train]'"


class TrainerError(Exception):
    """Base of every error the trainer package raises on purpose."""


class DatasetError(TrainerError):
    """A dataset cannot be built, found or read."""


class ExportError(TrainerError):
    """A dataset cannot be exported in the format asked for."""


class TrainingError(TrainerError):
    """A local training run cannot start, resume or finish."""


class HostedError(TrainerError):
    """A hosted fine-tuning provider refused a request, or its job failed."""

    def __init__(self, message: str, *, status_code: int | None = None, job_id: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.job_id = job_id


class RegistryError(TrainerError):
    """A model version is unknown or its record is invalid."""


class ServeError(TrainerError):
    """A model cannot be served, or the gateway refused to deploy it."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def missing_train_extra(exc: ImportError) -> TrainingError:
    """The error to raise when torch, transformers, peft or trl cannot be imported."""
    return TrainingError(f"this needs the training extra ({exc.name or exc}); {TRAIN_EXTRA_HINT}")
