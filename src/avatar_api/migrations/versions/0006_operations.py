"""Operations: per-API-key rate-limit windows.

Revision ID: 0006_operations
Revises: 0005_trainings
Create Date: 2026-11-25 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import avatar_api.db

revision: str = "0006_operations"
down_revision: str | None = "0005_trainings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_windows",
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("window_start", avatar_api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id", "window_start"),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_windows")
