"""What a job handler raises to steer the worker; anything else counts as retryable."""

from __future__ import annotations


class JobError(Exception):
    """Base of the errors a handler raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RetryableJobError(JobError):
    """Try again later: after ``delay_seconds``, or after the worker's backoff when ``None``.

    Still counts as an attempt, so a job that keeps raising it ends up failed.
    """

    def __init__(self, message: str, *, delay_seconds: float | None = None) -> None:
        if delay_seconds is not None and delay_seconds < 0:
            raise ValueError("delay_seconds must not be negative")
        super().__init__(message)
        self.delay_seconds = delay_seconds


class PermanentJobError(JobError):
    """Retrying cannot help: the job fails at once and its kind's ``on_give_up`` runs."""

    def __init__(self, message: str, *, code: str = "job_failed") -> None:
        super().__init__(message)
        self.code = code
