"""access links: the links in force-facing emails (portal and reply), kept as SHA-256 of their tokens
with their scope, expiry and revocation (ncpi_workflow/access_links.py)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('access_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('salt', sa.String(length=32), nullable=False),
    sa.Column('force_code', sa.String(length=3), nullable=False),
    sa.Column('inspection_id', sa.String(length=40), nullable=False),
    sa.Column('recommendation_ids', sa.JSON(), nullable=False),
    sa.Column('items', sa.JSON(), nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=200), nullable=True),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("purpose IN ('portal', 'reply')", name=op.f('ck_access_links_purpose_valid')),
    sa.ForeignKeyConstraint(['force_code'], ['forces.code'], name=op.f('fk_access_links_force_code_forces')),
    sa.ForeignKeyConstraint(['inspection_id'], ['inspections.id'], name=op.f('fk_access_links_inspection_id_inspections')),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_access_links_notification_id_notifications')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_links')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_access_links_token_hash'))
    )
    with op.batch_alter_table('access_links', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_links_force_code'), ['force_code'], unique=False)
        batch_op.create_index(batch_op.f('ix_access_links_inspection_id'), ['inspection_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_access_links_notification_id'), ['notification_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('access_links', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_links_notification_id'))
        batch_op.drop_index(batch_op.f('ix_access_links_inspection_id'))
        batch_op.drop_index(batch_op.f('ix_access_links_force_code'))
    op.drop_table('access_links')
