"""backdated_actions: every recorded action keeps two dates, when it happened and when it was recorded
(`--on DATE`). The existing columns (submitted_at, decided_at, opened_at, met_at) hold when it happened;
the new, nullable ones when it was recorded (NULL in rows from before: the same instant).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

COLUMNS = [
    ('progress_updates', 'recorded_at'),
    ('evidence', 'recorded_at'),
    ('decisions', 'recorded_at'),
    ('revisits', 'recorded_at'),
    ('deadlines', 'met_recorded_at'),
]


def upgrade() -> None:
    # ALTER TABLE ... ADD COLUMN in place on both databases: a batch copy would drop tables that
    # others' foreign keys name (see 0009).
    for table, column in COLUMNS:
        op.add_column(table, sa.Column(column, sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN on both databases (SQLite 3.35 and later), for the same reason.
    for table, column in reversed(COLUMNS):
        op.execute(f'ALTER TABLE {table} DROP COLUMN {column}')
