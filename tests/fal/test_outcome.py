"""fetch_outcome: how each answer (or failure) of fal's status call steers the pollers."""

from __future__ import annotations

import pytest

from avatar_api.fal.gateway import (
    FalCredentialsMissing,
    FalError,
    FalPermanentError,
    FalRetriableError,
    FalState,
    FalStatus,
)
from avatar_api.fal.outcome import FalRequestGone, fetch_outcome
from avatar_api.jobs.errors import RetryableJobError
from tests.fakes import RecordingGateway


class AnsweringGateway(RecordingGateway):
    def __init__(self, status: FalStatus | None = None, error: FalError | None = None) -> None:
        super().__init__()
        self.answer = status
        self.error = error

    async def status(self, endpoint: str, request_id: str) -> FalStatus:
        self.calls.append(("status", request_id))
        if self.error is not None:
            raise self.error
        assert self.answer is not None
        return self.answer

    async def result(self, endpoint: str, request_id: str) -> dict[str, object]:
        self.calls.append(("result", request_id))
        return {"images": []}


@pytest.mark.parametrize(
    ("status", "fetches_result"),
    [
        (FalStatus(state=FalState.IN_QUEUE, queue_position=3), False),
        (FalStatus(state=FalState.IN_PROGRESS), False),
        (FalStatus(state=FalState.COMPLETED), True),
        (FalStatus(state=FalState.COMPLETED, error="boom", error_type="Oops"), False),
    ],
)
async def test_the_result_is_fetched_only_for_a_request_that_completed_well(
    status: FalStatus, fetches_result: bool
) -> None:
    gateway = AnsweringGateway(status)
    outcome = await fetch_outcome(gateway, "fal-ai/x", "req-1")
    assert outcome.status is status
    assert (outcome.output is not None) is fetches_result
    assert [name for name, _ in gateway.calls] == (
        ["status", "result"] if fetches_result else ["status"]
    )


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (FalRetriableError("timeout"), RetryableJobError),
        (FalRetriableError("busy", status_code=503), RetryableJobError),
        # Our key is at fault, not the request: keep the row, retry the job.
        (FalCredentialsMissing("no key"), RetryableJobError),
        (FalPermanentError("bad key", status_code=401), RetryableJobError),
        (FalPermanentError("forbidden", status_code=403), RetryableJobError),
        # fal no longer knows it (or its result expired): no answer will ever come.
        (FalPermanentError("not found", status_code=404), FalRequestGone),
        (FalPermanentError("gone", status_code=410), FalRequestGone),
    ],
)
async def test_failures_retry_unless_the_request_is_gone(
    error: FalError, raised: type[Exception]
) -> None:
    with pytest.raises(raised):
        await fetch_outcome(AnsweringGateway(error=error), "fal-ai/x", "req-1")
