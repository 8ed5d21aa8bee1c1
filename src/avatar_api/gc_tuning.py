"""Garbage-collector settings for the long-running processes (API and worker).

Measured on `GET /v1/avatars/{id}` under load (`make bench BENCH_ARGS="--only reads"`):
with CPython's defaults the collector took about 20% of the server's CPU, mostly in full
collections that each walked the ~180,000 objects left by start-up (the app, its routes
and models, SQLAlchemy's and pydantic's machinery) and paused every request in flight for
about 100 ms.

- ``gc.freeze()`` once start-up is done moves those objects into the permanent
  generation: they live as long as the process, and no later collection walks them.
- A larger first-generation threshold makes young collections rarer. Each one walks the
  objects of every request in flight and promotes the survivors; fewer of them means less
  of that work and fewer promotions feeding the older generations' collections.

Reference counting still frees almost everything at once; only reference cycles wait for
the collector, and they are still collected (those among the frozen start-up objects,
which live as long as the process anyway, are not).
"""

from __future__ import annotations

import gc

# Young collections after this many net allocations (CPython's default is 700); the older
# generations keep CPython's ratios.
YOUNG_THRESHOLD = 10_000


def tune_after_startup() -> None:
    """Freeze what start-up built and make young collections rarer."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
