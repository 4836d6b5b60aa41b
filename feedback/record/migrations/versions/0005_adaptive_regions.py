"""Adaptive studies and region marks: which sampler chose a study item and its score, where a vote saw a problem,
and participants screened out by a failed attention check.

study_items gain `sampler` ('latin' for every existing item), `sampler_score` and `sampler_votes`; choices gain
`regions` (JSON, NULL for existing votes); participants gain `screened_out_at` (a column, not a new status: on
SQLite a changed CHECK would copy the participants table, which the study items reference).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere (matches feedback.record.models.JSONType).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # SQLite: batch mode copies the tables (CHECK constraints cannot be altered in place).
    with op.batch_alter_table('study_items') as batch:
        batch.add_column(sa.Column('sampler', sa.String(length=16), nullable=False, server_default='latin'))
        batch.add_column(sa.Column('sampler_score', sa.Float(), nullable=True))
        batch.add_column(sa.Column('sampler_votes', sa.Integer(), nullable=True))
        batch.create_check_constraint(op.f('ck_study_items_sampler'), "sampler IN ('latin', 'adaptive')")
    with op.batch_alter_table('choices') as batch:
        batch.add_column(sa.Column('regions', JSON_TYPE, nullable=True))
    with op.batch_alter_table('participants') as batch:  # add_column only: no table copy on SQLite
        batch.add_column(sa.Column('screened_out_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    connection = op.get_bind()
    adaptive = connection.execute(sa.text("SELECT COUNT(*) FROM study_items WHERE sampler <> 'latin'")).scalar()
    marked = connection.execute(sa.text("SELECT COUNT(*) FROM choices WHERE regions IS NOT NULL")).scalar()
    screened = connection.execute(sa.text("SELECT COUNT(*) FROM participants WHERE screened_out_at IS NOT NULL")
                                  ).scalar()
    if adaptive or marked or screened:
        raise RuntimeError(f"{adaptive} adaptive study items, {marked} votes with regions and {screened} screened-out "
                           "participants exist; delete their studies before downgrading below 0005")
    # DROP COLUMN in place (SQLite >= 3.35): a batch copy would drop tables other rows reference.
    op.drop_column('participants', 'screened_out_at')
    op.drop_column('choices', 'regions')
    with op.batch_alter_table('study_items') as batch:
        batch.drop_constraint(op.f('ck_study_items_sampler'), type_='check')
        batch.drop_column('sampler_votes')
        batch.drop_column('sampler_score')
        batch.drop_column('sampler')
