"""Job kinds: the name a job is enqueued under and the code that runs it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.models.job import KIND_MAX_LENGTH, Job
from avatar_api.services import Services

_KIND_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def validate_kind_name(name: str) -> str:
    """Job kinds are dotted lower-case names (``training.submit``)."""
    if len(name) > KIND_MAX_LENGTH or not _KIND_NAME.fullmatch(name):
        raise ValueError(
            f"invalid job kind {name!r}: expected a dotted name like 'training.submit'"
        )
    return name


@dataclass(frozen=True)
class JobContext:
    """What a handler gets for one attempt.

    ``session`` is the attempt's own transaction: the worker commits it together with the
    job's ``succeeded`` status, or rolls it back. Handlers flush, never commit, so their
    effects land exactly once. ``job`` is a detached snapshot taken at claim time;
    ``attempt`` counts from 1.
    """

    session: AsyncSession
    job: Job
    services: Services
    attempt: int


JobHandler = Callable[[JobContext], Awaitable[None]]
GiveUpHandler = Callable[[JobContext, str], Awaitable[None]]


@dataclass(frozen=True)
class JobKind:
    """A named handler.

    ``on_give_up(ctx, error)`` runs when the job fails for good (a
    :class:`~avatar_api.jobs.errors.PermanentJobError`, or attempts exhausted), in a fresh
    session committed together with the job's ``failed`` status, so the failure becomes
    visible where callers look (e.g. the training is marked failed).
    """

    name: str
    handler: JobHandler
    on_give_up: GiveUpHandler | None = None

    def __post_init__(self) -> None:
        validate_kind_name(self.name)


class JobRegistry(Mapping[str, JobKind]):
    """The kinds one worker runs; it claims only jobs whose kind is registered here."""

    def __init__(self, kinds: Iterable[JobKind] = ()) -> None:
        self._kinds: dict[str, JobKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: JobKind) -> JobKind:
        if kind.name in self._kinds:
            raise ValueError(f"job kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind
        return kind

    def __getitem__(self, name: str) -> JobKind:
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)
