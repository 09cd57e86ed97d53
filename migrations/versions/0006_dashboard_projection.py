"""dashboard projection: the due date of each open recommendation's running clock
(recommendations.clock_due) and of each awaited report-level item (deadlines.waiting_due), each with
its inspection's force (force_code), and the partial indexes that serve the all-forces aggregate;
backfilled from the rows as they stand

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# The rules of ncpi_workflow/app/read_models.py (refresh_recommendation_clocks, refresh_report_items)
# as they stood at this revision, in SQL both databases run.
BACKFILL_RECOMMENDATIONS = """
UPDATE recommendations SET
  force_code = (SELECT i.force_code FROM inspections i WHERE i.id = recommendations.inspection_id),
  clock_due = CASE
    WHEN (phase IN ('published', 'force_notified', 'in_progress')
          AND (force_claim IS NULL OR force_claim != 'implemented'))
         OR phase = 'evidence_requested'
    THEN (SELECT min(d.current_due) FROM deadlines d
          WHERE d.recommendation_id = recommendations.id AND d.cycle = recommendations.cycle
            AND d.kind = CASE WHEN recommendations.phase = 'evidence_requested' THEN 'evidence' ELSE 'recommendation' END)
    ELSE NULL END
"""
BACKFILL_ITEMS = """
UPDATE deadlines SET
  force_code = (SELECT i.force_code FROM inspections i WHERE i.id = deadlines.inspection_id),
  waiting_due = CASE
    WHEN (SELECT i.phase FROM inspections i WHERE i.id = deadlines.inspection_id) != 'closed'
         AND ((deadlines.key IN ('action_plan', 'pcc_response', 'immediate_update') AND deadlines.met_at IS NULL)
              OR (deadlines.key = 'revisit_by'
                  AND deadlines.cycle = (SELECT i.cycle FROM inspections i WHERE i.id = deadlines.inspection_id)
                  AND (SELECT i.phase FROM inspections i WHERE i.id = deadlines.inspection_id) = 'following_up'))
    THEN current_due
    ELSE NULL END
WHERE key IN ('action_plan', 'pcc_response', 'immediate_update', 'revisit_by')
"""


def upgrade() -> None:
    op.add_column('recommendations', sa.Column('clock_due', sa.Date(), nullable=True))
    op.add_column('recommendations', sa.Column('force_code', sa.String(length=3), nullable=True))
    op.add_column('deadlines', sa.Column('waiting_due', sa.Date(), nullable=True))
    op.add_column('deadlines', sa.Column('force_code', sa.String(length=3), nullable=True))
    op.execute(BACKFILL_RECOMMENDATIONS)
    op.execute(BACKFILL_ITEMS)
    op.create_index('ix_recommendations_open_clock', 'recommendations', ['force_code', 'clock_due', 'phase'], unique=False,
                    sqlite_where=sa.text("phase != 'closed'"), postgresql_where=sa.text("phase != 'closed'"))
    op.create_index('ix_recommendations_unprojected', 'recommendations', ['inspection_id'], unique=False,
                    sqlite_where=sa.text('force_code IS NULL'), postgresql_where=sa.text('force_code IS NULL'))
    op.create_index('ix_deadlines_waiting', 'deadlines', ['force_code', 'waiting_due', 'key', 'inspection_id'], unique=False,
                    sqlite_where=sa.text('waiting_due IS NOT NULL'), postgresql_where=sa.text('waiting_due IS NOT NULL'))
    op.create_index('ix_inspections_unprojected', 'inspections', ['force_code'], unique=False,
                    sqlite_where=sa.text('projection_version = 0'), postgresql_where=sa.text('projection_version = 0'))


def downgrade() -> None:
    op.drop_index('ix_inspections_unprojected', table_name='inspections')
    op.drop_index('ix_deadlines_waiting', table_name='deadlines')
    op.drop_index('ix_recommendations_unprojected', table_name='recommendations')
    op.drop_index('ix_recommendations_open_clock', table_name='recommendations')
    # ALTER TABLE ... DROP COLUMN on both databases (SQLite 3.35 and later): a batch copy of these
    # tables would drop tables that others' foreign keys name.
    for table, column in (('deadlines', 'force_code'), ('deadlines', 'waiting_due'),
                          ('recommendations', 'force_code'), ('recommendations', 'clock_due')):
        op.execute(f'ALTER TABLE {table} DROP COLUMN {column}')
