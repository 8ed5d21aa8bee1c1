"""`python -m bench [--only NAME ...]`: run the benchmarks, print one table, write results.md.

Every figure is a ratio against a baseline measured in the same run on the same machine;
each bar is printed with PASS or MISS ("info" rows have no bar).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
import traceback
from collections.abc import Callable

from bench.util import (
    REPO_ROOT,
    WORK_ROOT,
    WRK_CONNECTIONS,
    WRK_SECONDS,
    WRK_THREADS,
    WRK_WARMUP_SECONDS,
    Outcome,
    Row,
    machine_facts,
)

BENCHMARKS = ("reads", "webhooks", "photos", "archive", "scaleout")
RESULTS = REPO_ROOT / "bench" / "results.md"
HOW_TO_READ = [
    "- ratio: ours / baseline for rates (higher is better), ours / baseline for latency and "
    "memory (lower is better), baseline time / ours for the scale-out drain (the speed-up).",
    "- HTTP: uvicorn, 1 worker process, uvloop + httptools, no uvicorn access log, for ours "
    "and the bare FastAPI app alike (bench/bare_app.py: same paths, no work); wrk "
    f"-t{WRK_THREADS} -c{WRK_CONNECTIONS}, a {WRK_WARMUP_SECONDS} s warm-up, then "
    f"{WRK_SECONDS} s. Ours as deployed: JSON logs at INFO, the per-key rate limit counting "
    "(limit never reached), a fresh PostgreSQL database per benchmark.",
    "- Everything shares one machine (2 cores here: load generator, server, PostgreSQL): "
    "figures are for comparing runs on the same machine, not absolute capacity.",
    "- info rows carry no bar; notes give the figures behind each verdict.",
]


def _load(name: str) -> Callable[[], Outcome]:
    module = importlib.import_module(f"bench.{name}")
    runner: Callable[[], Outcome] = module.run
    return runner


def render(outcomes: list[Outcome], facts: dict[str, str], command: str, seconds: float) -> str:
    header = ("benchmark", "metric", "ours", "baseline", "ratio", "bar", "result", "note")
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        if outcome.error is not None:
            rows.append((outcome.name, "(did not run)", "", "", "", "", "ERROR", outcome.error))
        for row in outcome.rows:
            rows.append(
                (
                    row.bench,
                    row.metric,
                    row.ours,
                    row.baseline,
                    row.ratio,
                    row.bar,
                    row.verdict,
                    row.note,
                )
            )
    lines = [
        "# Benchmark results",
        "",
        f"`{command}`, {seconds:.0f} s in all, on {facts['date']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines += ["", "## How to read it", "", *HOW_TO_READ, "", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in facts.items()]
    lines += [
        "",
        "Per benchmark (wall time): " + ", ".join(f"{o.name} {o.seconds:.0f} s" for o in outcomes),
    ]
    return "\n".join(lines) + "\n"


def print_table(outcomes: list[Outcome]) -> None:
    all_rows: list[Row] = [row for o in outcomes for row in o.rows]
    widths = {
        "metric": max([len(r.metric) for r in all_rows] + [6]),
        "ours": max([len(r.ours) for r in all_rows] + [4]),
        "baseline": max([len(r.baseline) for r in all_rows] + [8]),
    }
    print()
    print(
        f"{'bench':<9} {'metric':<{widths['metric']}} {'ours':>{widths['ours']}} "
        f"{'baseline':>{widths['baseline']}} {'ratio':>6} {'bar':>8}  result"
    )
    for outcome in outcomes:
        if outcome.error is not None:
            print(f"{outcome.name:<9} ERROR: {outcome.error}")
        for r in outcome.rows:
            print(
                f"{r.bench:<9} {r.metric:<{widths['metric']}} {r.ours:>{widths['ours']}} "
                f"{r.baseline:>{widths['baseline']}} {r.ratio:>6} {r.bar:>8}  {r.verdict}"
                + (f"  ({r.note})" if r.note else "")
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        help="run only this benchmark (repeatable); results.md is written only for a full run",
    )
    args = parser.parse_args(argv)
    # The service code used to seed data logs its test-mode warning once per process.
    logging.getLogger("avatar_api").setLevel(logging.ERROR)
    selected = args.only or list(BENCHMARKS)
    command = "python -m bench" + "".join(f" --only {name}" for name in args.only or [])

    started = time.monotonic()
    outcomes: list[Outcome] = []
    for name in selected:
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            outcome = _load(name)()
        except Exception as exc:  # one broken benchmark must not hide the others
            traceback.print_exc()
            outcome = Outcome(name, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        outcome.seconds = time.monotonic() - t0
        outcomes.append(outcome)
        for row in outcome.rows:
            print(f"   {row.metric}: {row.ours} vs {row.baseline} ({row.ratio}) {row.verdict}")
    seconds = time.monotonic() - started

    print_table(outcomes)
    report = render(outcomes, machine_facts(), command, seconds)
    # A partial run must not overwrite the full table; it goes to the scratch directory.
    target = RESULTS if args.only is None else WORK_ROOT / "results-partial.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report)
    print(f"\nwritten to {target.relative_to(REPO_ROOT)} ({seconds:.0f} s)")
    failed = any(o.error for o in outcomes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
