"""Result copies on trainings; generations and their fal webhook events.

Revision ID: 0007_results
Revises: 0006_operations
Create Date: 2026-11-25 16:13:15.679742
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import avatar_api.db

revision: str = "0007_results"
down_revision: str | None = "0006_operations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("avatar_id", sa.Uuid(), nullable=False),
        sa.Column("training_id", sa.Uuid(), nullable=False),
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
                name="generationstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("final_prompt", sa.Text(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("fal_input", sa.JSON(), nullable=True),
        sa.Column("test_mode", sa.Boolean(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("submit_started_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_checked_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["avatar_id"], ["avatars.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["training_id"], ["trainings.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_generations_avatar_created", ["avatar_id", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_generations_status_checked", ["status", "last_checked_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_generations_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "generation_webhook_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("generation_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("received_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("applied_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "body_sha256", name="uq_generation_events_request_body"),
    )
    with op.batch_alter_table("generation_webhook_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_generation_webhook_events_generation_id"),
            ["generation_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_generation_webhook_events_request_id"), ["request_id"], unique=False
        )

    with op.batch_alter_table("trainings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lora_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("config_key", sa.String(length=512), nullable=True))
        batch_op.add_column(
            sa.Column("result_copied_at", avatar_api.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("result_copy_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trainings", schema=None) as batch_op:
        batch_op.drop_column("result_copy_error")
        batch_op.drop_column("result_copied_at")
        batch_op.drop_column("config_key")
        batch_op.drop_column("lora_key")

    with op.batch_alter_table("generation_webhook_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generation_webhook_events_request_id"))
        batch_op.drop_index(batch_op.f("ix_generation_webhook_events_generation_id"))

    op.drop_table("generation_webhook_events")
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generations_tenant_id"))
        batch_op.drop_index("ix_generations_status_checked")
        batch_op.drop_index("ix_generations_avatar_created")

    op.drop_table("generations")
