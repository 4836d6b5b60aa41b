"""User studies: studies, participants, study items; viewing conditions and consent version on choices.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere (matches feedback.record.models.JSONType).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

CHOICE_COLUMNS = (
    ('zoom_count', sa.Integer()),
    ('viewport_w', sa.Integer()),
    ('viewport_h', sa.Integer()),
    ('device_pixel_ratio', sa.Float()),
    ('consent_version', sa.String(length=32)),
)


def upgrade() -> None:
    op.create_table('studies',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('definition', JSON_TYPE, nullable=False),
    sa.Column('consent_version', sa.String(length=32), nullable=False),
    sa.Column('stimuli', JSON_TYPE, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies'))
    )

    op.create_table('participants',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('study_id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('participant_index', sa.Integer(), nullable=False),
    sa.Column('platform_id_hash', sa.String(length=64), nullable=True),
    sa.Column('consent_version', sa.String(length=32), nullable=False),
    sa.Column('completion_code', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('active', 'completed')", name=op.f('ck_participants_status')),
    sa.CheckConstraint('participant_index >= 0', name=op.f('ck_participants_participant_index')),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_participants_session_id_sessions')),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_participants_study_id_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_participants')),
    sa.UniqueConstraint('completion_code', name=op.f('uq_participants_completion_code')),
    sa.UniqueConstraint('study_id', 'participant_index', name=op.f('uq_participants_study_id_participant_index'))
    )
    op.create_index('ix_participants_study_id', 'participants', ['study_id'])
    op.create_index('ix_participants_session_id', 'participants', ['session_id'])
    op.create_index('ix_participants_platform_id_hash', 'participants', ['platform_id_hash'])

    op.create_table('study_items',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('participant_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('stimulus', sa.Integer(), nullable=False),
    sa.Column('round_id', sa.String(length=32), nullable=False),
    sa.Column('left_image_hash', sa.String(length=64), nullable=False),
    sa.Column('right_image_hash', sa.String(length=64), nullable=False),
    sa.Column('left_condition', sa.String(length=64), nullable=False),
    sa.Column('right_condition', sa.String(length=64), nullable=False),
    sa.Column('is_repeat', sa.Boolean(), nullable=False),
    sa.Column('repeat_of', sa.Integer(), nullable=True),
    sa.Column('is_attention_check', sa.Boolean(), nullable=False),
    sa.Column('expected', sa.String(length=8), nullable=True),
    sa.Column('answer', sa.String(length=8), nullable=True),
    sa.Column('choice_id', sa.String(length=32), nullable=True),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('position >= 0', name=op.f('ck_study_items_position')),
    sa.CheckConstraint("answer IS NULL OR answer IN ('left', 'right', 'tie')", name=op.f('ck_study_items_answer')),
    sa.ForeignKeyConstraint(['choice_id'], ['choices.id'], name=op.f('fk_study_items_choice_id_choices')),
    sa.ForeignKeyConstraint(['participant_id'], ['participants.id'],
                            name=op.f('fk_study_items_participant_id_participants')),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_study_items_round_id_rounds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study_items')),
    sa.UniqueConstraint('participant_id', 'position', name=op.f('uq_study_items_participant_id_position'))
    )
    op.create_index('ix_study_items_participant_id', 'study_items', ['participant_id'])
    op.create_index('ix_study_items_round_id', 'study_items', ['round_id'])
    op.create_index('ix_study_items_choice_id', 'study_items', ['choice_id'])

    # Nullable columns: ALTER TABLE ADD COLUMN on both backends (batch mode copies nothing here).
    with op.batch_alter_table('choices') as batch:
        for name, type_ in CHOICE_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('choices') as batch:
        for name, _type in reversed(CHOICE_COLUMNS):
            batch.drop_column(name)
    op.drop_table('study_items')
    op.drop_table('participants')
    op.drop_table('studies')
