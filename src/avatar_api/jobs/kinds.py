"""The job kinds this service's workers run.

Each domain contributes its kinds from its ``tasks.py`` (``training.submit``, webhook
deliveries, ...); they are registered here as they are written.
"""

from __future__ import annotations

from avatar_api.jobs.registry import JobRegistry


def build_registry() -> JobRegistry:
    return JobRegistry()
