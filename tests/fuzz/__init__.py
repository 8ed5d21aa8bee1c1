"""Property-based fuzzing: the HTTP API (schemathesis) and the photo decoder (Hypothesis).

Both run a bounded number of examples in `make test`; `AVATAR_FUZZ_EXAMPLES` raises it
(`make fuzz` runs them longer).
"""

from __future__ import annotations

import os


def fuzz_examples(default: int) -> int:
    """Examples per property: `AVATAR_FUZZ_EXAMPLES` when set, else `default`."""
    raw = os.environ.get("AVATAR_FUZZ_EXAMPLES", "").strip()
    if not raw:
        return default
    value = int(raw)
    if value < 1:
        raise ValueError("AVATAR_FUZZ_EXAMPLES must be a positive integer")
    return value
