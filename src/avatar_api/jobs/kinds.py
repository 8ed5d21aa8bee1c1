"""The job kinds this service's workers run.

Each domain contributes its kinds from its ``tasks.py`` (``training.submit``, webhook
deliveries, ...); they are registered here as they are written.
"""

from __future__ import annotations

from avatar_api.jobs.registry import JobRegistry


def build_registry() -> JobRegistry:
    from avatar_api.fal.cleanup import CLEANUP_JOB_KINDS
    from avatar_api.fal.simulator import SIMULATOR_JOB_KINDS
    from avatar_api.generations.tasks import GENERATION_JOB_KINDS
    from avatar_api.training.results import RESULT_JOB_KINDS
    from avatar_api.training.tasks import TRAINING_JOB_KINDS
    from avatar_api.webhooks.delivery import WEBHOOK_JOB_KINDS

    # The simulator's kinds are always registered: jobs it enqueued in test mode must not
    # be stranded if a worker restarts with another configuration.
    return JobRegistry(
        [
            *TRAINING_JOB_KINDS,
            *GENERATION_JOB_KINDS,
            *RESULT_JOB_KINDS,
            *CLEANUP_JOB_KINDS,
            *WEBHOOK_JOB_KINDS,
            *SIMULATOR_JOB_KINDS,
        ]
    )
