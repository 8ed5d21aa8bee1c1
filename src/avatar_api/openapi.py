"""The committed OpenAPI document is generated from the app, never edited by hand."""

from __future__ import annotations

import json

from avatar_api.app import create_app
from avatar_api.settings import Settings


def render_openapi() -> str:
    # Fixed settings: the document must not depend on the machine's environment.
    app = create_app(Settings(_env_file=None, database_url="sqlite+aiosqlite://"))
    return json.dumps(app.openapi(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"
