"""Trainings, idempotency keys, fal webhook events and the simulator's requests.

Revision ID: 0005_trainings
Revises: 0003_photos
Create Date: 2026-11-25 16:04:24.479726
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import avatar_api.db

revision: str = "0005_trainings"
down_revision: str | None = "0004_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "simulated_requests",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("submitted_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("queue_seconds", sa.Float(), nullable=False),
        sa.Column("train_seconds", sa.Float(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("cancelled_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.JSON(), nullable=True),
        sa.Column("created_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "scope", "key", name="uq_idempotency_tenant_scope_key"),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "trainings",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("avatar_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "submitting",
                "in_queue",
                "in_progress",
                "completed",
                "failed",
                "cancelled",
                name="trainingstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("preset", sa.String(length=16), nullable=True),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("fal_input", sa.JSON(), nullable=True),
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("test_mode", sa.Boolean(), nullable=False),
        sa.Column("photo_count", sa.Integer(), nullable=False),
        sa.Column("archive_key", sa.String(length=512), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("queue_position", sa.Integer(), nullable=True),
        sa.Column("progress_steps", sa.Integer(), nullable=True),
        sa.Column("progress_total", sa.Integer(), nullable=True),
        sa.Column("logs", sa.JSON(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("lora_url", sa.Text(), nullable=True),
        sa.Column("lora_size", sa.Integer(), nullable=True),
        sa.Column("config_url", sa.Text(), nullable=True),
        sa.Column("finetune_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("submit_started_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("started_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_checked_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["avatar_id"], ["avatars.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("avatar_id", "attempt", name="uq_trainings_avatar_attempt"),
        sa.UniqueConstraint("request_id"),
    )
    with op.batch_alter_table("trainings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_trainings_status_checked", ["status", "last_checked_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_trainings_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "fal_webhook_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("training_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("received_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("applied_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["training_id"], ["trainings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "body_sha256", name="uq_fal_events_request_body"),
    )
    with op.batch_alter_table("fal_webhook_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fal_webhook_events_request_id"), ["request_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("fal_webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fal_webhook_events_request_id"))

    op.drop_table("fal_webhook_events")
    with op.batch_alter_table("trainings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trainings_tenant_id"))
        batch_op.drop_index("ix_trainings_status_checked")

    op.drop_table("trainings")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_tenant_id"))

    op.drop_table("idempotency_keys")
    op.drop_table("simulated_requests")
