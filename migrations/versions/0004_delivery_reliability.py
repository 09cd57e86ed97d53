"""delivery reliability: the rendered message kept with its outbox row, delivery leases, the relay's
state as each worker found it, and workflows whose task keeps failing

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rendered', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True))
    op.create_table('relay_status',
    sa.Column('reporter', sa.String(length=200), nullable=False),
    sa.Column('relay', sa.String(length=300), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("state IN ('ok', 'failing')", name=op.f('ck_relay_status_state_valid')),
    sa.PrimaryKeyConstraint('reporter', name=op.f('pk_relay_status'))
    )
    op.create_table('stuck_workflows',
    sa.Column('workflow_id', sa.String(length=300), nullable=False),
    sa.Column('workflow_type', sa.String(length=100), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('since', sa.DateTime(timezone=True), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('workflow_id', name=op.f('pk_stuck_workflows'))
    )


def downgrade() -> None:
    op.drop_table('stuck_workflows')
    op.drop_table('relay_status')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('last_attempt_at')
        batch_op.drop_column('rendered')
