"""All configuration, read once from the environment (and ``.env``).

The only module that reads the environment. The service's own variables use the
``AVATAR_`` prefix; the trainer variables keep the exact names of the system this
service replaces (``FAL_KEY``, ``FAL_PORTRAIT_STEPS``, ...), because deployments
already set them.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", "dev-secret-change-me"})
DEV_SECRET = "dev-secret-change-me"  # noqa: S105  (refused in production)


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class FaceCheck(StrEnum):
    enforce = "enforce"
    warn = "warn"
    off = "off"


class StyleTrainer(StrEnum):
    flux_pro_trainer = "flux-pro-trainer"
    flux_lora_fast_training = "flux-lora-fast-training"


class SimulatorFailure(StrEnum):
    """Faults the test-mode simulator injects, to rehearse what fal can do."""

    none = "none"
    trainer_error = "trainer_error"
    lost_webhook = "lost_webhook"
    duplicate_webhook = "duplicate_webhook"


class UnsafeConfiguration(ValueError):
    """Raised at start-up when a production configuration would be unsafe."""


def _fal(name: str) -> AliasChoices:
    # Legacy trainer variables keep their exact names; the field name still works for
    # code that builds Settings(...) directly.
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AVATAR_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
        env_ignore_empty=True,
    )

    # --- service ---
    environment: Environment = Environment.development
    database_url: str = "sqlite+aiosqlite:///./var/avatar.db"
    database_pool_size: int = Field(default=20, ge=1)
    public_base_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr = SecretStr(DEV_SECRET)
    log_level: str = "INFO"
    log_format: Literal["console", "json"] | None = None
    dev_key_file: Path = Path("./var/dev-api-key")

    # --- storage ---
    storage_backend: Literal["local", "s3"] = "local"
    storage_local_root: Path = Path("./var/storage")
    s3_bucket: str = "avatar-api"
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_path_style: bool = True
    download_url_ttl_seconds: int = Field(default=900, ge=60, le=7 * 24 * 3600)
    archive_url_ttl_seconds: int = Field(default=6 * 3600, ge=600, le=7 * 24 * 3600)

    # --- avatars and photos ---
    avatar_metadata_max_bytes: int = Field(default=4096, ge=2, le=65536)
    upload_max_file_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    upload_max_request_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    upload_max_files: int = Field(default=20, ge=1, le=100)
    upload_concurrency: int = Field(default=2, ge=1, le=32)
    upload_temp_budget_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    photo_max_side: int = Field(default=2048, ge=256)
    photo_min_side: int = Field(default=512, ge=64)
    photo_max_pixels: int = Field(default=40_000_000, ge=1_000_000)
    photo_jpeg_quality: int = Field(default=92, ge=50, le=95)
    photo_face_check: FaceCheck = FaceCheck.enforce
    portrait_min_photos: int = Field(default=10, ge=1)
    portrait_max_photos: int = Field(default=20, ge=1)
    style_min_photos: int = Field(default=10, ge=1)
    style_max_photos: int = Field(default=30, ge=1)

    # --- jobs ---
    embedded_worker: bool = True
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    job_lease_seconds: int = Field(default=300, ge=10)
    job_poll_interval_seconds: float = Field(default=1.0, gt=0)
    job_max_attempts: int = Field(default=8, ge=1)

    # --- trainings ---
    training_poll_interval_seconds: float = Field(default=10.0, gt=0)
    training_reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    training_submit_timeout_seconds: float = Field(default=3 * 3600.0, gt=0)
    training_hard_timeout_seconds: float = Field(default=6 * 3600.0, gt=0)
    training_max_log_lines: int = Field(default=20, ge=1, le=500)
    result_max_bytes: int = Field(default=2 * 1024**3, ge=1024)
    retention_photo_days: int = Field(default=0, ge=0)

    # --- test-mode simulator ---
    simulator_queue_seconds: float = Field(default=3.0, ge=0)
    simulator_train_seconds: float = Field(default=20.0, ge=0)
    simulator_failure: SimulatorFailure = SimulatorFailure.none

    # --- outbound webhooks ---
    webhook_allow_private_targets: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=8, ge=1, le=30)
    webhook_max_endpoints_per_tenant: int = Field(default=20, ge=1, le=1000)

    # --- operations ---
    metrics_token: SecretStr | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    rate_limit_per_minute: int = Field(default=120, ge=0)
    auth_cache_seconds: float = Field(default=10.0, ge=0, le=300)
    quota_concurrent_trainings: int = Field(default=3, ge=0)
    quota_trainings_per_day: int = Field(default=20, ge=0)
    shutdown_grace_seconds: float = Field(default=8.0, gt=0, le=3600)
    shutdown_drain_delay_seconds: float = Field(default=0.0, ge=0, le=300)

    # --- fal.ai (legacy names, no prefix) ---
    fal_key: SecretStr | None = Field(default=None, validation_alias=_fal("FAL_KEY"))
    test_mode: bool | None = None
    allow_test_mode_in_production: bool = False
    style_trainer: StyleTrainer = StyleTrainer.flux_pro_trainer
    fal_store_io: bool = False
    fal_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    fal_jwks_url: str = "https://rest.fal.ai/.well-known/jwks.json"
    fal_rest_base_url: str = "https://api.fal.ai"
    fal_webhook_user_id: str | None = None
    fal_webhook_tolerance_seconds: int = Field(default=300, ge=30, le=3600)
    fal_portrait_steps: int = Field(
        default=1000, ge=1, le=10000, validation_alias=_fal("FAL_PORTRAIT_STEPS")
    )
    fal_portrait_learning_rate: float = Field(
        default=0.0002, ge=1e-6, le=1e-3, validation_alias=_fal("FAL_PORTRAIT_LEARNING_RATE")
    )
    fal_portrait_subject_crop: bool = Field(
        default=True, validation_alias=_fal("FAL_PORTRAIT_SUBJECT_CROP")
    )
    fal_portrait_create_masks: bool = Field(
        default=False, validation_alias=_fal("FAL_PORTRAIT_CREATE_MASKS")
    )
    fal_portrait_multiresolution: bool = Field(
        default=True, validation_alias=_fal("FAL_PORTRAIT_MULTIRESOLUTION")
    )
    fal_fast_portrait_steps: int = Field(
        default=300, ge=1, le=10000, validation_alias=_fal("FAL_FAST_PORTRAIT_STEPS")
    )
    fal_fast_portrait_lr: float = Field(
        default=0.0003, ge=1e-6, le=1e-3, validation_alias=_fal("FAL_FAST_PORTRAIT_LR")
    )
    fal_balanced_portrait_steps: int = Field(
        default=600, ge=1, le=10000, validation_alias=_fal("FAL_BALANCED_PORTRAIT_STEPS")
    )
    fal_balanced_portrait_lr: float = Field(
        default=0.0002, ge=1e-6, le=1e-3, validation_alias=_fal("FAL_BALANCED_PORTRAIT_LR")
    )
    fal_quality_portrait_steps: int = Field(
        default=1000, ge=1, le=10000, validation_alias=_fal("FAL_QUALITY_PORTRAIT_STEPS")
    )
    fal_quality_portrait_lr: float = Field(
        default=0.0001, ge=1e-6, le=1e-3, validation_alias=_fal("FAL_QUALITY_PORTRAIT_LR")
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> Settings:
        if self.portrait_min_photos > self.portrait_max_photos:
            raise ValueError(
                "AVATAR_PORTRAIT_MIN_PHOTOS must not exceed AVATAR_PORTRAIT_MAX_PHOTOS"
            )
        if self.style_min_photos > self.style_max_photos:
            raise ValueError("AVATAR_STYLE_MIN_PHOTOS must not exceed AVATAR_STYLE_MAX_PHOTOS")
        if self.upload_max_file_bytes > self.upload_max_request_bytes:
            raise ValueError(
                "AVATAR_UPLOAD_MAX_FILE_BYTES must not exceed AVATAR_UPLOAD_MAX_REQUEST_BYTES"
            )
        if self.upload_max_request_bytes > self.upload_temp_budget_bytes:
            raise ValueError(
                "AVATAR_UPLOAD_MAX_REQUEST_BYTES must not exceed AVATAR_UPLOAD_TEMP_BUDGET_BYTES"
            )
        return self

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.production

    @property
    def effective_test_mode(self) -> bool:
        """Whether trainings go to the built-in simulator instead of fal.ai.

        Explicit ``AVATAR_TEST_MODE`` wins. Without it, only development and test
        environments fall back to the simulator when no FAL key is set; production never
        does (``check_production_safety`` refuses to start instead).
        """
        if self.test_mode is not None:
            return self.test_mode
        if self.is_production:
            return False
        return self.fal_key is None or not self.fal_key.get_secret_value()

    @property
    def resolved_log_format(self) -> Literal["console", "json"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.is_production else "console"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def check_production_safety(self) -> None:
        """Refuse to start with a configuration that is unsafe in production.

        Raises :class:`UnsafeConfiguration` listing every problem and how to fix it.
        """
        if not self.is_production:
            return
        problems: list[str] = []
        if (
            self.secret_key.get_secret_value() in PLACEHOLDER_SECRETS
            or len(self.secret_key.get_secret_value()) < 32
        ):
            problems.append(
                "AVATAR_SECRET_KEY is a placeholder or shorter than 32 characters: set it to a "
                'random value, e.g. python -c "import secrets; print(secrets.token_urlsafe(48))"'
            )
        if self.effective_test_mode and not self.allow_test_mode_in_production:
            problems.append(
                "AVATAR_TEST_MODE is on in production: trainings would go to the simulator. "
                "Unset it, or set AVATAR_ALLOW_TEST_MODE_IN_PRODUCTION=true for a staging stack."
            )
        if not self.effective_test_mode and (
            self.fal_key is None or not self.fal_key.get_secret_value()
        ):
            problems.append("FAL_KEY is not set: set your fal.ai key (id:secret).")
        if self.storage_backend == "s3" and (
            self.s3_secret_access_key is not None
            and self.s3_secret_access_key.get_secret_value() in PLACEHOLDER_SECRETS
        ):
            problems.append("AVATAR_S3_SECRET_ACCESS_KEY is a placeholder: set the real secret.")
        if not self.public_base_url.startswith("https://"):
            problems.append(
                "AVATAR_PUBLIC_BASE_URL must be an https:// URL reachable by fal.ai "
                "(webhooks and photo archives are fetched from it)."
            )
        if self.webhook_allow_private_targets:
            problems.append(
                "AVATAR_WEBHOOK_ALLOW_PRIVATE_TARGETS is on in production: callers could make "
                "the service POST to internal addresses. Unset it (it is for local development)."
            )
        if problems:
            raise UnsafeConfiguration(
                "Refusing to start in production:\n" + "\n".join(f"- {p}" for p in problems)
            )
