"""register trail: the public register's dated, attributed statuses, and their projection

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

STATUSES = "'awaiting review', 'being progressed', 'will be progressed', 'no further action needed'"


def upgrade() -> None:
    op.create_table('register_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('idempotency_key', sa.String(length=300), nullable=False),
    sa.Column('recommendation_id', sa.String(length=48), nullable=False),
    sa.Column('cycle', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('set_by', sa.String(length=200), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f('ck_register_entries_status_valid')),
    sa.CheckConstraint('length(comment) > 0', name=op.f('ck_register_entries_comment_given')),
    sa.ForeignKeyConstraint(['recommendation_id'], ['recommendations.id'], name=op.f('fk_register_entries_recommendation_id_recommendations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_register_entries')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_register_entries_idempotency_key'))
    )
    with op.batch_alter_table('register_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_register_entries_recommendation_id'), ['recommendation_id'], unique=False)
    with op.batch_alter_table('recommendations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('register_status', sa.String(length=32), nullable=False, server_default='awaiting review'))
        batch_op.create_check_constraint('register_status_valid', f"register_status IN ({STATUSES})")


def downgrade() -> None:
    with op.batch_alter_table('recommendations', schema=None) as batch_op:
        batch_op.drop_constraint('register_status_valid', type_='check')
        batch_op.drop_column('register_status')
    op.drop_table('register_entries')
