"""areas_for_improvement (report file `areas_for_improvement`), revisit_reports and revisit_findings
(a post-inspection review's report, `programme: PIR`, recorded against the reviewed inspection's revisit)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('areas_for_improvement',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('inspection_id', sa.String(length=40), nullable=False),
    sa.Column('ref', sa.String(length=8), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['inspection_id'], ['inspections.id'],
                            name=op.f('fk_areas_for_improvement_inspection_id_inspections')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_areas_for_improvement')),
    sa.UniqueConstraint('inspection_id', 'ref', name=op.f('uq_areas_for_improvement_inspection_id'))
    )
    op.create_index(op.f('ix_areas_for_improvement_inspection_id'), 'areas_for_improvement', ['inspection_id'], unique=False)
    op.create_table('revisit_reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('inspection_id', sa.String(length=40), nullable=False),
    sa.Column('cycle', sa.Integer(), nullable=False),
    sa.Column('revisit_id', sa.Integer(), nullable=True),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('source_url', sa.Text(), nullable=False),
    sa.Column('published_on', sa.Date(), nullable=False),
    sa.Column('fieldwork_start', sa.Date(), nullable=False),
    sa.Column('fieldwork_end', sa.Date(), nullable=False),
    sa.Column('inspectors', sa.JSON(), nullable=False),
    sa.Column('illustrative', sa.Boolean(), nullable=False),
    sa.Column('report_sha256', sa.String(length=64), nullable=False),
    sa.Column('recorded_by', sa.String(length=200), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('fieldwork_end >= fieldwork_start', name=op.f('ck_revisit_reports_fieldwork_ordered')),
    sa.ForeignKeyConstraint(['inspection_id'], ['inspections.id'],
                            name=op.f('fk_revisit_reports_inspection_id_inspections')),
    sa.ForeignKeyConstraint(['revisit_id'], ['revisits.id'], name=op.f('fk_revisit_reports_revisit_id_revisits')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_revisit_reports')),
    sa.UniqueConstraint('inspection_id', 'cycle', name=op.f('uq_revisit_reports_inspection_id'))
    )
    op.create_index(op.f('ix_revisit_reports_inspection_id'), 'revisit_reports', ['inspection_id'], unique=False)
    op.create_table('revisit_findings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('revisit_report_id', sa.Integer(), nullable=False),
    sa.Column('recommendation_id', sa.String(length=48), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['recommendation_id'], ['recommendations.id'],
                            name=op.f('fk_revisit_findings_recommendation_id_recommendations')),
    sa.ForeignKeyConstraint(['revisit_report_id'], ['revisit_reports.id'],
                            name=op.f('fk_revisit_findings_revisit_report_id_revisit_reports')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_revisit_findings')),
    sa.UniqueConstraint('revisit_report_id', 'recommendation_id', name=op.f('uq_revisit_findings_revisit_report_id'))
    )
    op.create_index(op.f('ix_revisit_findings_revisit_report_id'), 'revisit_findings', ['revisit_report_id'], unique=False)
    op.create_index(op.f('ix_revisit_findings_recommendation_id'), 'revisit_findings', ['recommendation_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_revisit_findings_recommendation_id'), table_name='revisit_findings')
    op.drop_index(op.f('ix_revisit_findings_revisit_report_id'), table_name='revisit_findings')
    op.drop_table('revisit_findings')
    op.drop_index(op.f('ix_revisit_reports_inspection_id'), table_name='revisit_reports')
    op.drop_table('revisit_reports')
    op.drop_index(op.f('ix_areas_for_improvement_inspection_id'), table_name='areas_for_improvement')
    op.drop_table('areas_for_improvement')
