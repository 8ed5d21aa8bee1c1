from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avatar_api", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_", "FAL_"))}
    env["AVATAR_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env["AVATAR_DEV_KEY_FILE"] = str(tmp_path / "dev-key")
    return env


def test_keys_lifecycle(cli_env: dict[str, str]) -> None:
    assert cli("migrate", env=cli_env).returncode == 0
    created = cli("keys", "create", "--tenant", "acme", "--name", "bot", env=cli_env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("avk_")
    key_id = next(
        line.split(": ")[1] for line in created.stderr.splitlines() if line.startswith("key id")
    )

    listed = cli("keys", "list", env=cli_env)
    assert secret[:12] in listed.stdout
    assert secret not in listed.stdout
    assert "tenant=acme" in listed.stdout
    assert "active" in listed.stdout

    assert cli("keys", "revoke", key_id, env=cli_env).returncode == 0
    assert "revoked" in cli("keys", "list", env=cli_env).stdout


def test_dev_key_is_stable_across_runs(cli_env: dict[str, str]) -> None:
    assert cli("migrate", env=cli_env).returncode == 0
    first = cli("dev-key", env=cli_env).stdout.strip()
    second = cli("dev-key", env=cli_env).stdout.strip()
    assert first.startswith("avk_")
    assert first == second


def test_production_refuses_to_start_with_placeholders(cli_env: dict[str, str]) -> None:
    result = cli("migrate", env={**cli_env, "AVATAR_ENVIRONMENT": "production"})
    assert result.returncode == 2
    assert "AVATAR_SECRET_KEY" in result.stderr
    assert "FAL_KEY" in result.stderr
