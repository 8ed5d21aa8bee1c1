"""`avatar-api`: serve, worker, migrate, keys, openapi."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlmodel.ext.asyncio.session import AsyncSession

from avatar_api.settings import Settings, UnsafeConfiguration

if TYPE_CHECKING:
    from avatar_api.jobs.registry import JobRegistry

T = TypeVar("T")


def _run_in_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from avatar_api.db import create_engine, create_sessionmaker, session_scope

    async def main() -> T:
        engine = create_engine(settings)
        try:
            async with session_scope(create_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from avatar_api.migrate import upgrade

    upgrade(settings)
    print(f"database migrated to head: {settings.database_url.split('@')[-1]}")
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from avatar_api.lifecycle import serve
    from avatar_api.logging_setup import configure_logging

    settings.check_production_safety()
    configure_logging(level=settings.log_level, fmt=settings.resolved_log_format)
    # See avatar_api.lifecycle for what SIGTERM does (readiness, drain, grace, lifespan).
    return serve(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    )


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from avatar_api.logging_setup import configure_logging

    if args.check:
        return 0 if asyncio.run(_database_reachable(settings)) else 1
    configure_logging(level=settings.log_level, fmt=settings.resolved_log_format)
    asyncio.run(_run_worker(settings, concurrency=args.concurrency))
    return 0


async def _database_reachable(settings: Settings) -> bool:
    from sqlalchemy import text

    from avatar_api.db import create_engine

    engine = create_engine(settings)
    try:
        async with asyncio.timeout(10), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        print(f"database unreachable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    finally:
        await engine.dispose()
    return True


async def _run_worker(
    settings: Settings,
    *,
    concurrency: int | None,
    registry: JobRegistry | None = None,
    reconcile: bool = True,
) -> None:
    """Run jobs (of ``registry``, default: every kind) until SIGINT/SIGTERM."""
    import signal

    from avatar_api.bootstrap import build_services
    from avatar_api.db import create_engine, create_sessionmaker
    from avatar_api.gc_tuning import tune_after_startup
    from avatar_api.logging_setup import register_secrets
    from avatar_api.runtime import run_background

    register_secrets(settings)
    metrics_server = None
    if settings.metrics_port is not None:
        from avatar_api.observability.exporter import start_metrics_server

        metrics_server = start_metrics_server(settings)
    engine = create_engine(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        services = build_services(settings, create_sessionmaker(engine))
        tune_after_startup()
        # The first signal asks for a graceful stop (see run_background).
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_background(
                services, stop, concurrency=concurrency, registry=registry, reconcile=reconcile
            )
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await services.aclose()
    finally:
        await engine.dispose()
        if metrics_server is not None:
            metrics_server.shutdown()


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from avatar_api.auth.service import create_api_key

    issued = _run_in_session(
        settings, lambda s: create_api_key(s, tenant_name=args.tenant, name=args.name)
    )
    print(f"tenant: {issued.tenant.name} ({issued.tenant.id})", file=sys.stderr)
    print(f"key id: {issued.api_key.id}", file=sys.stderr)
    print("API key (shown once, store it now):", file=sys.stderr)
    print(issued.secret)
    return 0


def cmd_keys_list(settings: Settings, _: argparse.Namespace) -> int:
    from avatar_api.auth.service import list_api_keys

    rows = _run_in_session(settings, list_api_keys)
    for key, tenant in rows:
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        print(f"{key.id}  {key.prefix}...  tenant={tenant.name}  {state}  {key.name}")
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from avatar_api.auth.service import revoke_api_key

    key = _run_in_session(settings, lambda s: revoke_api_key(s, api_key_id=uuid.UUID(args.id)))
    print(f"revoked {key.id} ({key.prefix}...)")
    return 0


def cmd_dev_key(settings: Settings, _: argparse.Namespace) -> int:
    """Print the local development key, creating it on first use (development only)."""
    from avatar_api.auth.service import authenticate, create_api_key
    from avatar_api.errors import Unauthorized

    if settings.is_production:
        print("dev-key is for development only", file=sys.stderr)
        return 2
    path = settings.dev_key_file
    if path.exists():
        secret = path.read_text().strip()
        try:
            _run_in_session(settings, lambda s: authenticate(s, secret=secret))
        except Unauthorized:
            secret = ""
        if secret:
            print(secret)
            return 0
    issued = _run_in_session(
        settings, lambda s: create_api_key(s, tenant_name="local", name="make run")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(issued.secret + "\n")
    path.chmod(0o600)
    print(issued.secret)
    return 0


def cmd_openapi(settings: Settings, args: argparse.Namespace) -> int:
    from avatar_api.openapi import render_openapi

    text = render_openapi()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run background jobs until SIGINT/SIGTERM")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="jobs run at once (default: AVATAR_WORKER_CONCURRENCY)",
    )
    worker.add_argument(
        "--check", action="store_true", help="exit 0 if the database is reachable, else 1"
    )
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("migrate", help="migrate the database to the latest schema").set_defaults(
        func=cmd_migrate
    )
    sub.add_parser("dev-key", help="print the local development API key").set_defaults(
        func=cmd_dev_key
    )

    openapi = sub.add_parser("openapi", help="write the OpenAPI document")
    openapi.add_argument("--output", "-o", default="openapi/openapi.json")
    openapi.set_defaults(func=cmd_openapi)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create a key (and the tenant if new)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    create.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="list keys").set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_keys_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
        settings.check_production_safety()
    except UnsafeConfiguration as exc:
        print(str(exc), file=sys.stderr)
        return 2
    result: int = args.func(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
