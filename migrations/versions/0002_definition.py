"""Keep the workflow definition each onboarding runs under, not only its hash.

With the states themselves at hand, a run can tell whether a changed
definition leaves an onboarding's remaining states as they were.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("onboardings") as batch:
        batch.add_column(sa.Column("definition", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("onboardings") as batch:
        batch.drop_column("definition")
