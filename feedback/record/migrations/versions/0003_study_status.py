"""Studies are prepared in the background: status (preparing | active | failed), progress, error, inputs.

Existing studies were computed inside their create request, so they become 'active' with progress
n of n (n = their number of stimuli).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere (matches feedback.record.models.JSONType).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # SQLite: batch mode copies the table to add the CHECK constraints; PostgreSQL alters it in place.
    with op.batch_alter_table('studies') as batch:
        batch.add_column(sa.Column('status', sa.String(length=16), nullable=False, server_default='active'))
        batch.add_column(sa.Column('progress_done', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('progress_total', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('error', sa.String(length=2000), nullable=True))
        batch.add_column(sa.Column('inputs', JSON_TYPE, nullable=True))
    studies = sa.table('studies', sa.column('id', sa.String), sa.column('stimuli', JSON_TYPE),
                       sa.column('progress_done', sa.Integer), sa.column('progress_total', sa.Integer))
    connection = op.get_bind()
    for study_id, stimuli in connection.execute(sa.select(studies.c.id, studies.c.stimuli)).all():
        n = len(stimuli or [])
        connection.execute(sa.update(studies).where(studies.c.id == study_id)
                           .values(progress_done=n, progress_total=n))
    with op.batch_alter_table('studies') as batch:
        batch.create_check_constraint(op.f('ck_studies_status'), "status IN ('preparing', 'active', 'failed')")
        batch.create_check_constraint(op.f('ck_studies_progress'), 'progress_done >= 0 AND progress_done <= progress_total')


def downgrade() -> None:
    # A study that never became active has no stimuli and cannot be used under 0002: refuse to drop it silently.
    connection = op.get_bind()
    left = connection.execute(sa.text("SELECT COUNT(*) FROM studies WHERE status <> 'active'")).scalar()
    if left:
        raise RuntimeError(f"{left} studies are preparing or failed; delete them before downgrading below 0003")
    with op.batch_alter_table('studies') as batch:
        batch.drop_constraint(op.f('ck_studies_progress'), type_='check')
        batch.drop_constraint(op.f('ck_studies_status'), type_='check')
        for name in ('inputs', 'error', 'progress_total', 'progress_done', 'status'):
            batch.drop_column(name)
