"""The committed OpenAPI document is generated from the app, never edited by hand."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from avatar_api.app import create_app
from avatar_api.settings import Settings


def render_openapi() -> str:
    # Fixed settings: the document must not depend on the machine's environment.
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None,
            database_url="sqlite+aiosqlite://",
            storage_local_root=Path(tmp),
            test_mode=False,
            fal_key="unused:unused",
        )
        app = create_app(settings)
    return json.dumps(app.openapi(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"
