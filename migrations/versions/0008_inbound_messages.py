"""inbound_messages: replies received by email (recorded, triaged or automatic), once per Message-ID

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inbound_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.String(length=300), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('mail_from', sa.String(length=320), nullable=False),
    sa.Column('to_addresses', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('force_code', sa.String(length=3), nullable=True),
    sa.Column('link_id', sa.Integer(), nullable=True),
    sa.Column('recommendation_ids', sa.JSON(), nullable=False),
    sa.Column('attachments', sa.JSON(), nullable=False),
    sa.Column('text_excerpt', sa.Text(), nullable=False),
    sa.Column('acknowledgement_id', sa.Integer(), nullable=True),
    sa.CheckConstraint("outcome IN ('processing', 'recorded', 'triaged', 'automatic')",
                       name=op.f('ck_inbound_messages_outcome_valid')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_messages')),
    sa.UniqueConstraint('message_id', name=op.f('uq_inbound_messages_message_id'))
    )
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbound_messages_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_messages_outcome'), ['outcome'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_messages_outcome'))
        batch_op.drop_index(batch_op.f('ix_inbound_messages_received_at'))
    op.drop_table('inbound_messages')
