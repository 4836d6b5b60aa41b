"""Gallery study items: K > 2 images per item (`gallery`), the best as a position '1'..'6', an optional worst.

The left/right columns become nullable (a gallery item lists its images in `gallery` instead); every existing
item is pairwise and keeps its values.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere (matches feedback.record.models.JSONType).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
PAIRWISE_ANSWER = "answer IS NULL OR answer IN ('left', 'right', 'tie')"
ANSWER = "answer IS NULL OR answer IN ('left', 'right', 'tie', '1', '2', '3', '4', '5', '6')"
WORST = "worst IS NULL OR (worst IN ('1', '2', '3', '4', '5', '6') AND worst <> answer)"
SHOWN = "gallery IS NOT NULL OR (left_image_hash IS NOT NULL AND right_image_hash IS NOT NULL)"
PAIR_COLUMNS = (('left_image_hash', 64), ('right_image_hash', 64), ('left_condition', 64), ('right_condition', 64))


def upgrade() -> None:
    # SQLite: batch mode copies the table (constraints and nullability cannot be altered in place).
    with op.batch_alter_table('study_items') as batch:
        batch.add_column(sa.Column('gallery', JSON_TYPE, nullable=True))
        batch.add_column(sa.Column('worst', sa.String(length=8), nullable=True))
        for name, length in PAIR_COLUMNS:
            batch.alter_column(name, existing_type=sa.String(length=length), nullable=True)
        batch.drop_constraint(op.f('ck_study_items_answer'), type_='check')
        batch.create_check_constraint(op.f('ck_study_items_answer'), ANSWER)
        batch.create_check_constraint(op.f('ck_study_items_worst'), WORST)
        batch.create_check_constraint(op.f('ck_study_items_shown'), SHOWN)


def downgrade() -> None:
    connection = op.get_bind()
    left = connection.execute(sa.text("SELECT COUNT(*) FROM study_items WHERE gallery IS NOT NULL")).scalar()
    if left:
        raise RuntimeError(f"{left} gallery study items exist; delete their studies before downgrading below 0004")
    with op.batch_alter_table('study_items') as batch:
        batch.drop_constraint(op.f('ck_study_items_shown'), type_='check')
        batch.drop_constraint(op.f('ck_study_items_worst'), type_='check')
        batch.drop_constraint(op.f('ck_study_items_answer'), type_='check')
        batch.create_check_constraint(op.f('ck_study_items_answer'), PAIRWISE_ANSWER)
        for name, length in PAIR_COLUMNS:
            batch.alter_column(name, existing_type=sa.String(length=length), nullable=False)
        batch.drop_column('worst')
        batch.drop_column('gallery')
