from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _worker_check(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVATAR_", "FAL_"))}
    env["AVATAR_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "avatar_api", "worker", "--check"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_worker_check_passes_when_the_database_is_reachable(database_url: str) -> None:
    result = _worker_check(database_url)
    assert result.returncode == 0, result.stderr


def test_worker_check_fails_when_the_database_is_unreachable(tmp_path: Path) -> None:
    result = _worker_check(f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    assert result.returncode == 1
    assert "database unreachable" in result.stderr
