"""Hand-written fakes for the edges tests cannot reach."""

from __future__ import annotations

from collections.abc import Mapping

from avatar_api.fal.gateway import CancelOutcome, FalState, FalStatus, Submission


class RecordingGateway:
    """A TrainerGateway that records calls; for tests that must not reach any trainer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    async def submit(
        self,
        endpoint: str,
        arguments: Mapping[str, object],
        *,
        webhook_url: str | None,
        store_io: bool = False,
    ) -> Submission:
        self.calls.append(("submit", (endpoint, dict(arguments), webhook_url)))
        return Submission(request_id=f"req-{len(self.calls)}")

    async def status(self, endpoint: str, request_id: str) -> FalStatus:
        self.calls.append(("status", request_id))
        return FalStatus(state=FalState.IN_QUEUE, queue_position=0)

    async def result(self, endpoint: str, request_id: str) -> dict[str, object]:
        self.calls.append(("result", request_id))
        return {}

    async def cancel(self, endpoint: str, request_id: str) -> CancelOutcome:
        self.calls.append(("cancel", request_id))
        return CancelOutcome.CANCELLATION_REQUESTED

    async def delete_payloads(self, request_id: str) -> bool:
        self.calls.append(("delete_payloads", request_id))
        return True
