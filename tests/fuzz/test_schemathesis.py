"""Schemathesis against the real app, in-process (ASGI), on each database backend.

Every operation of the app's own OpenAPI document is fuzzed with two tenants (two API keys),
first operation by operation, then statefully along links (create an avatar -> read, edit,
upload, train, delete it ...) so schemathesis can also replay one tenant's reads as the
other tenant (`object_level_authorization`) and check deleted objects stay gone.

Checked on every response: no 5xx, status code, content type, headers and body as
documented (problem+json included), invalid input rejected, missing auth rejected, no
cross-tenant reads. Not checked: `allow_header_conformance`/`unsupported_method` (the
`Allow` header of Starlette's 405 lists only the first matching route's methods; HTTP
semantics, not the documented schema) and `positive_data_acceptance` (opaque cursors and
ids that are schema-valid strings are rightly refused with a documented 422/404).

The app runs on schemathesis's own event loop thread with real commits, so this module
uses its own engine (not the rolled-back fixtures) and wipes the tables before and after,
like tests/live.py. `AVATAR_FUZZ_EXAMPLES` raises the number of examples.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis.stateful import Bundle, initialize
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.python import asgi
from schemathesis import GenerationMode
from fastapi import FastAPI
from schemathesis.specs.openapi.checks import status_code_conformance

from avatar_api.app import create_app
from avatar_api.auth.service import create_api_key
from avatar_api.db import create_engine, create_sessionmaker, session_scope
from avatar_api.settings import Settings
from avatar_api.webhooks.router import get_resolver
from avatar_api.webhooks.ssrf import IPAddress
from tests.conftest import make_settings
from tests.fuzz import fuzz_examples
from tests.live import wipe

EXAMPLES = fuzz_examples(20)
STATEFUL_STEPS = 8
BASE_URL = "http://testserver"  # the Host schemathesis's ASGI client sends
PUBLIC_ADDRESS = "93.184.215.14"  # documentation range: never contacted (no worker runs)
PEERS = ("alice", "bob")
RATE_LIMIT = 1_000_000_000

# Values later operations need, by the operation that returns them (OpenAPI runtime
# expressions). Links are added to the schema for every operation whose path parameters
# one source supplies, so stateful runs reach real objects instead of 404s.
LINK_SOURCES: dict[str, dict[str, str]] = {
    "create_avatar": {"avatar_id": "$response.body#/id"},
    "upload_photos": {
        "avatar_id": "$request.path.avatar_id",
        "photo_id": "$response.body#/accepted/0/id",
    },
    "start_training": {
        "avatar_id": "$request.path.avatar_id",
        "training_id": "$response.body#/id",
    },
    "create_webhook_endpoint": {"endpoint_id": "$response.body#/id"},
}

# Checks left out, and why: see the module docstring.
DISABLED_CHECKS = ("allow_header_conformance", "unsupported_method", "positive_data_acceptance")


# --- known defects in src/ (each has a strict-xfail reproducer below) ------------------------


def is_body_parse_error(response: schemathesis.Response) -> bool:
    """FastAPI's 400 for a body that is not JSON at all; no operation documents a 400."""
    if response.status_code != 400:
        return False
    try:
        problem = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(problem, dict) and problem.get("code") == "bad_request"


def status_code_conformance_except_known(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """`status_code_conformance`, minus the known undocumented 400 (see the xfail test)."""
    if is_body_parse_error(response):
        return None
    result: bool | None = status_code_conformance(ctx, response, case)
    return result


# --- the app under test ------------------------------------------------------------------------


async def _public_resolver(host: str, port: int) -> list[IPAddress]:
    # Webhook endpoint URLs go through the SSRF guard's DNS lookup: answer every name with
    # a public address instead of querying the machine's resolver for fuzzed host names.
    return [ipaddress.ip_address(PUBLIC_ADDRESS)]


async def _reset_and_issue_keys(settings: Settings) -> list[str]:
    engine = create_engine(settings)
    try:
        await wipe(engine)
        async with session_scope(create_sessionmaker(engine)) as session:
            return [(await create_api_key(session, tenant_name=name)).secret for name in PEERS]
    finally:
        await engine.dispose()


async def _wipe(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        await wipe(engine)
    finally:
        await engine.dispose()


def add_links(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of the OpenAPI document with links from creating operations to their users."""
    doc = copy.deepcopy(document)
    operations: dict[str, tuple[str, dict[str, Any]]] = {}
    for path, item in doc["paths"].items():
        for operation in item.values():
            if isinstance(operation, dict) and "operationId" in operation:
                operations[operation["operationId"]] = (path, operation)
    for source_id, supplies in LINK_SOURCES.items():
        if source_id not in operations:
            continue
        _, source = operations[source_id]
        success = next(code for code in source["responses"] if code.startswith("2"))
        links = source["responses"][success].setdefault("links", {})
        for target_id, (path, target) in operations.items():
            names = [p["name"] for p in target.get("parameters", []) if p.get("in") == "path"]
            if names and all(name in supplies for name in names):
                links[f"to_{target_id}"] = {
                    "operationId": target_id,
                    "parameters": {name: supplies[name] for name in names},
                }
    return doc


class ModuleLifespan:
    """ASGI wrapper that runs the app's lifespan once per module instead of once per test.

    schemathesis's pytest plugin ends every ASGI app's lifespan after each test, and an app
    whose lifespan ended has closed its services; building a new app and schema for every
    test would cost more than the fuzzing itself. Lifespan messages are answered here until
    `forward_lifespan` is set, at the end of the module, to shut the app down for real.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.forward_lifespan = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan" or self.forward_lifespan:
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


@dataclass
class FuzzApi:
    app: FastAPI
    schema: Any  # schemathesis's OpenApiSchema (the package ships no stubs)
    keys: dict[str, str]


@pytest.fixture(scope="module")
def fuzz_api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzApi]:
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(
        database_url=database_url,
        storage_local_root=tmp / "storage",
        public_base_url=BASE_URL,
        # Thousands of requests a minute from two keys: keep the per-key rate limit and its
        # bookkeeping on the request path, but out of the way of the fuzzer.
        rate_limit_per_minute=RATE_LIMIT,
        quota_trainings_per_day=RATE_LIMIT,
    )
    keys = dict(zip(PEERS, asyncio.run(_reset_and_issue_keys(settings)), strict=True))
    auth_file = tmp / "auth.json"
    auth_file.write_text(json.dumps({"auth": [_wfc_user(name, key) for name, key in keys.items()]}))
    config = schemathesis.Config.from_dict(
        {
            "auth": {"wfc": {"path": str(auth_file), "peers": list(PEERS)}},
            "checks": {
                "status_code_conformance": {"enabled": False},
                **{name: {"enabled": False} for name in DISABLED_CHECKS},
            },
            "generation": {"max-examples": EXAMPLES},
            "phases": {"stateful": {"enabled": True, "inference": {"algorithms": []}}},
        }
    )
    # The app's own outgoing calls (the simulator's JWKS) come back to it in-process.
    loopback = httpx.ASGITransport(app=FastAPI())
    http = httpx.AsyncClient(transport=loopback, base_url=BASE_URL)
    app = create_app(settings, http=http)
    loopback.app = app
    app.dependency_overrides[get_resolver] = lambda: _public_resolver
    wrapped = ModuleLifespan(app)
    schema = schemathesis.openapi.from_dict(add_links(app.openapi()), config=config)
    schema.app = wrapped
    schema.location = "/openapi.json"
    try:
        yield FuzzApi(app=app, schema=schema, keys=keys)
    finally:
        # The app's shutdown (services, engine) on the event loop it ran on.
        wrapped.forward_lifespan = True
        with asgi.get_client(wrapped):
            pass
        asgi.shutdown_lifespans()
        asyncio.run(_wipe(settings))


def _wfc_user(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {key}"}]}


SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)

def _operation_cases() -> list[tuple[str, GenerationMode]]:
    """(operation, mode) pairs; negative data only where there is input to make invalid."""
    # Built without a database: create_app connects lazily, and only the document is read.
    document = create_app(make_settings()).openapi()
    cases = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in {"get", "put", "post", "patch", "delete"}:
                continue
            label = f"{method.upper()} {path}"
            cases.append((label, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((label, GenerationMode.NEGATIVE))
    return cases


@pytest.mark.parametrize(("label", "mode"), _operation_cases(), ids=lambda v: str(v))
def test_every_operation(fuzz_api: FuzzApi, label: str, mode: GenerationMode) -> None:
    method, path = label.split(" ", 1)
    operation = fuzz_api.schema[path][method]

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @SETTINGS
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(additional_checks=[status_code_conformance_except_known])

    run()


def test_stateful_two_tenants(fuzz_api: FuzzApi) -> None:
    base = fuzz_api.schema.as_state_machine()

    seen: list[tuple[str | None, str, int]] = []
    create_avatar = fuzz_api.schema["/v1/avatars"]["POST"]

    class TwoTenants(base):  # type: ignore[misc,valid-type]
        # schemathesis's dependency analysis reads `external_user_id` in the avatar body as a
        # reference to an "ExternalUser" that nothing creates, so it never starts a scenario
        # with POST /v1/avatars; start every scenario with one avatar, like a real client.
        @initialize(
            target=Bundle("catch_all"),
            case=create_avatar.as_strategy(generation_mode=GenerationMode.POSITIVE),
        )
        def create_an_avatar(self, case: schemathesis.Case) -> StepOutput | None:
            self.recorder.record_case(case=case)
            return self._step(StepInput.initial(case))

        def after_call(self, response: schemathesis.Response, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            seen.append((case.auth_identity, case.operation.label, response.status_code))

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            additional_checks: list[Any] | None = None,
            **kwargs: Any,
        ) -> None:
            super().validate_response(
                response,
                case,
                additional_checks=[*(additional_checks or []), status_code_conformance_except_known],
                **kwargs,
            )

    TwoTenants.run(
        settings=hypothesis.settings(
            SETTINGS, max_examples=EXAMPLES, stateful_step_count=STATEFUL_STEPS
        )
    )
    import collections
    print(collections.Counter(seen))


# --- reproducers of known defects --------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="src: a request body that is not JSON answers 400 bad_request, which no operation "
    "documents (FastAPI raises HTTPException(400) before validation). Fix: answer 422 "
    "validation_error from a RequestValidationError, or add 400 to problem_responses.",
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/avatars"), ("PATCH", "/v1/avatars/{avatar_id}")],
)
def test_malformed_json_body_answers_a_documented_status(
    fuzz_api: FuzzApi, method: str, path: str
) -> None:
    operation = fuzz_api.schema[path][method]
    case = operation.Case(
        path_parameters={"avatar_id": "3b241101-e2bb-4255-8caf-4136c566a962"},
        headers={"Authorization": f"Bearer {fuzz_api.keys['alice']}"},
        body=b"\xff{",
        media_type="application/json",
    )
    response = case.call()
    assert response.status_code < 500
    case.validate_response(response, checks=[status_code_conformance])


def test_fuzzing_reaches_real_objects(fuzz_api: FuzzApi, tmp_path: Path) -> None:
    """The links are there: a stateful run would otherwise only ever see 404s."""
    links = add_links(fuzz_api.app.openapi())["paths"]["/v1/avatars"]["post"]["responses"]["201"]
    assert {"to_get_avatar", "to_upload_photos", "to_start_training"} <= set(links["links"])
