"""Initial schema: annotators, sessions, source images, rounds, candidates, choices, pairs, refinements.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

# JSONB on PostgreSQL, JSON text elsewhere (matches feedback.record.models.JSONType).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table('annotators',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('pseudonym', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotators')),
    sa.UniqueConstraint('pseudonym', name=op.f('uq_annotators_pseudonym'))
    )
    op.create_table('sessions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('annotator_id', sa.String(length=32), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('study_id', sa.String(length=64), nullable=True),
    sa.Column('condition', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotators.id'], name=op.f('fk_sessions_annotator_id_annotators')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_sessions_token_hash'))
    )
    op.create_index('ix_sessions_annotator_id', 'sessions', ['annotator_id'])
    op.create_index('ix_sessions_study_id', 'sessions', ['study_id'])

    op.create_table('source_images',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=True),
    sa.Column('image_hash', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('degradation_spec', sa.String(length=512), nullable=True),
    sa.Column('degradation_seed', sa.BigInteger(), nullable=True),
    sa.Column('degradation_params', JSON_TYPE, nullable=True),
    sa.Column('gt_image_hash', sa.String(length=64), nullable=True),
    sa.Column('degraded_image_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("origin IN ('upload', 'sample', 'study')", name=op.f('ck_source_images_origin')),
    sa.CheckConstraint('width > 0 AND height > 0', name=op.f('ck_source_images_positive_size')),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_source_images_session_id_sessions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_source_images'))
    )
    op.create_index('ix_source_images_image_hash', 'source_images', ['image_hash'])
    op.create_index('ix_source_images_session_id', 'source_images', ['session_id'])

    op.create_table('rounds',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('session_id', sa.String(length=32), nullable=False),
    sa.Column('source_image_id', sa.String(length=32), nullable=False),
    sa.Column('parent_round_id', sa.String(length=32), nullable=True),
    sa.Column('round_index', sa.Integer(), nullable=False),
    sa.Column('backbone_name', sa.String(length=128), nullable=False),
    sa.Column('backbone_weights_hash', sa.String(length=64), nullable=True),
    sa.Column('prior_id', sa.String(length=128), nullable=True),
    sa.Column('prior_weights_hash', sa.String(length=64), nullable=True),
    sa.Column('params', JSON_TYPE, nullable=False),
    sa.Column('seeds', JSON_TYPE, nullable=False),
    sa.Column('code_version', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('dtype', sa.String(length=32), nullable=False),
    sa.Column('stage_seconds', JSON_TYPE, nullable=False),
    sa.Column('restored_image_hash', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('study_id', sa.String(length=64), nullable=True),
    sa.Column('condition', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('round_index >= 0', name=op.f('ck_rounds_round_index')),
    sa.ForeignKeyConstraint(['parent_round_id'], ['rounds.id'], name=op.f('fk_rounds_parent_round_id_rounds')),
    sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], name=op.f('fk_rounds_session_id_sessions')),
    sa.ForeignKeyConstraint(['source_image_id'], ['source_images.id'], name=op.f('fk_rounds_source_image_id_source_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rounds'))
    )
    op.create_index('ix_rounds_parent_round_id', 'rounds', ['parent_round_id'])
    op.create_index('ix_rounds_session_id_created_at', 'rounds', ['session_id', 'created_at'])
    op.create_index('ix_rounds_source_image_id', 'rounds', ['source_image_id'])
    op.create_index('ix_rounds_study_id', 'rounds', ['study_id'])

    op.create_table('candidates',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('round_id', sa.String(length=32), nullable=False),
    sa.Column('image_hash', sa.String(length=64), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=True),
    sa.Column('strength', sa.Float(), nullable=True),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('is_restored', sa.Boolean(), nullable=False),
    sa.Column('scores', JSON_TYPE, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('position >= 0', name=op.f('ck_candidates_position')),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_candidates_round_id_rounds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_candidates')),
    sa.UniqueConstraint('round_id', 'position', name=op.f('uq_candidates_round_id_position'))
    )
    op.create_index('ix_candidates_round_id', 'candidates', ['round_id'])

    op.create_table('choices',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('round_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason_tags', JSON_TYPE, nullable=False),
    sa.Column('decision_ms', sa.Integer(), nullable=True),
    sa.Column('selector', sa.String(length=200), nullable=False),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('pairwise', 'tie', 'skip')", name=op.f('ck_choices_kind')),
    sa.CheckConstraint('decision_ms IS NULL OR decision_ms >= 0', name=op.f('ck_choices_decision_ms')),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_choices_round_id_rounds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_choices')),
    sa.UniqueConstraint('round_id', 'idempotency_key', name=op.f('uq_choices_round_id_idempotency_key'))
    )
    op.create_index('ix_choices_round_id_created_at', 'choices', ['round_id', 'created_at'])

    op.create_table('choice_candidates',
    sa.Column('choice_id', sa.String(length=32), nullable=False),
    sa.Column('candidate_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.CheckConstraint("role IN ('preferred', 'rejected')", name=op.f('ck_choice_candidates_role')),
    sa.ForeignKeyConstraint(['candidate_id'], ['candidates.id'], name=op.f('fk_choice_candidates_candidate_id_candidates')),
    sa.ForeignKeyConstraint(['choice_id'], ['choices.id'], name=op.f('fk_choice_candidates_choice_id_choices')),
    sa.PrimaryKeyConstraint('choice_id', 'candidate_id', name=op.f('pk_choice_candidates'))
    )
    op.create_index('ix_choice_candidates_candidate_id', 'choice_candidates', ['candidate_id'])

    op.create_table('preference_pairs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('choice_id', sa.String(length=32), nullable=False),
    sa.Column('chosen_candidate_id', sa.String(length=32), nullable=False),
    sa.Column('rejected_candidate_id', sa.String(length=32), nullable=False),
    sa.Column('label', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('chosen_candidate_id <> rejected_candidate_id', name=op.f('ck_preference_pairs_distinct')),
    sa.CheckConstraint('label IN (0.5, 1.0)', name=op.f('ck_preference_pairs_label')),
    sa.ForeignKeyConstraint(['choice_id'], ['choices.id'], name=op.f('fk_preference_pairs_choice_id_choices')),
    sa.ForeignKeyConstraint(['chosen_candidate_id'], ['candidates.id'], name=op.f('fk_preference_pairs_chosen_candidate_id_candidates')),
    sa.ForeignKeyConstraint(['rejected_candidate_id'], ['candidates.id'], name=op.f('fk_preference_pairs_rejected_candidate_id_candidates')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_preference_pairs')),
    sa.UniqueConstraint('choice_id', 'chosen_candidate_id', 'rejected_candidate_id', name=op.f('uq_preference_pairs_choice_id_chosen_candidate_id_rejected_candidate_id'))
    )
    op.create_index('ix_preference_pairs_choice_id', 'preference_pairs', ['choice_id'])
    op.create_index('ix_preference_pairs_chosen_candidate_id', 'preference_pairs', ['chosen_candidate_id'])
    op.create_index('ix_preference_pairs_rejected_candidate_id', 'preference_pairs', ['rejected_candidate_id'])

    op.create_table('refinements',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('round_id', sa.String(length=32), nullable=False),
    sa.Column('choice_id', sa.String(length=32), nullable=False),
    sa.Column('result_image_hash', sa.String(length=64), nullable=False),
    sa.Column('params', JSON_TYPE, nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('next_round_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('seconds >= 0', name=op.f('ck_refinements_seconds')),
    sa.ForeignKeyConstraint(['choice_id'], ['choices.id'], name=op.f('fk_refinements_choice_id_choices')),
    sa.ForeignKeyConstraint(['next_round_id'], ['rounds.id'], name=op.f('fk_refinements_next_round_id_rounds')),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_refinements_round_id_rounds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refinements'))
    )
    op.create_index('ix_refinements_choice_id', 'refinements', ['choice_id'])
    op.create_index('ix_refinements_next_round_id', 'refinements', ['next_round_id'])
    op.create_index('ix_refinements_round_id', 'refinements', ['round_id'])


def downgrade() -> None:
    # Dropping a table drops its indexes.
    op.drop_table('refinements')
    op.drop_table('preference_pairs')
    op.drop_table('choice_candidates')
    op.drop_table('choices')
    op.drop_table('candidates')
    op.drop_table('rounds')
    op.drop_table('source_images')
    op.drop_table('sessions')
    op.drop_table('annotators')
