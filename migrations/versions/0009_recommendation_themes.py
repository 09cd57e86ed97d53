"""recommendation_themes: the public register's themes of each recommendation (config/themes.yaml),
and recommendations.restricted (kept off the public register)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('recommendation_themes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('recommendation_id', sa.String(length=48), nullable=False),
    sa.Column('theme', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['recommendation_id'], ['recommendations.id'],
                            name=op.f('fk_recommendation_themes_recommendation_id_recommendations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recommendation_themes')),
    sa.UniqueConstraint('recommendation_id', 'theme', name=op.f('uq_recommendation_themes_recommendation_id'))
    )
    with op.batch_alter_table('recommendation_themes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recommendation_themes_recommendation_id'), ['recommendation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_recommendation_themes_theme'), ['theme'], unique=False)
    # ALTER TABLE ... ADD COLUMN in place: a batch copy would drop a table others' foreign keys name.
    op.add_column('recommendations', sa.Column('restricted', sa.Boolean(), nullable=False, server_default=sa.text('false')))


def downgrade() -> None:
    # The themes go first: they refer to the recommendations, whose table SQLite rebuilds below.
    with op.batch_alter_table('recommendation_themes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recommendation_themes_theme'))
        batch_op.drop_index(batch_op.f('ix_recommendation_themes_recommendation_id'))
    op.drop_table('recommendation_themes')
    # ALTER TABLE ... DROP COLUMN on both databases (SQLite 3.35 and later): a batch copy of the
    # recommendations would drop a table that others' foreign keys name.
    op.execute('ALTER TABLE recommendations DROP COLUMN restricted')
