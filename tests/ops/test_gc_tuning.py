"""The served app freezes what start-up built; apps built by tests are left alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, sys
    from avatar_api.app import create_app
    from tests.conftest import make_settings

    async def main(tune_gc):
        default = gc.get_threshold()
        app = create_app(make_settings(), tune_gc=tune_gc)
        async with app.router.lifespan_context(app):
            print(gc.get_freeze_count() > 0, gc.get_threshold() == default, gc.get_threshold()[0])

    asyncio.run(main(sys.argv[1] == "tuned"))
    """
)


def _run(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_the_served_app_freezes_start_up_objects_and_collects_young_ones_less_often() -> None:
    assert _run("tuned") == "True False 10000"
    tests_app = _run("default").split()
    assert tests_app[:2] == ["False", "True"]  # the interpreter's own settings, untouched
