"""Training quota charges: the daily quota no longer forgets erased avatars' trainings.

Revision ID: 0008_quota_charges
Revises: 0007_results
Create Date: 2026-12-06 16:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import avatar_api.db

revision: str = "0008_quota_charges"
down_revision: str | None = "0007_results"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "training_quota_charges",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("started_at", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_training_quota_charges_tenant_id"), "training_quota_charges", ["tenant_id"]
    )
    op.create_index(
        op.f("ix_training_quota_charges_started_at"), "training_quota_charges", ["started_at"]
    )
    # Every existing training was a start: the quota carries on where it was (housekeeping
    # purges the old ones).
    op.execute(
        "INSERT INTO training_quota_charges (id, tenant_id, started_at) "
        "SELECT id, tenant_id, created_at FROM trainings"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_training_quota_charges_started_at"), table_name="training_quota_charges")
    op.drop_index(op.f("ix_training_quota_charges_tenant_id"), table_name="training_quota_charges")
    op.drop_table("training_quota_charges")
