"""Correcting a choice: a new choice on a round supersedes the previous one, which is kept with the time.

choices gain `superseded_at` (NULL: the round's live choice). Rounds that already hold several choices keep them
all; each but the latest is marked superseded at the time the next one was made, so export, analysis and refine
read one choice per round from now on. A partial unique index allows one live choice per round.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

LIVE = sa.text("superseded_at IS NULL")
# The time the next choice of the same round was made (latest_choice's order: created_at, then id).
NEXT_CHOICE = """
    SELECT MIN(later.created_at) FROM choices AS later
    WHERE later.round_id = choices.round_id
      AND (later.created_at > choices.created_at OR (later.created_at = choices.created_at AND later.id > choices.id))
"""


def upgrade() -> None:
    with op.batch_alter_table('choices') as batch:  # add_column only: no table copy on SQLite
        batch.add_column(sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=True))
    op.execute(f"UPDATE choices SET superseded_at = ({NEXT_CHOICE}) WHERE EXISTS ({NEXT_CHOICE})")
    op.create_index('ix_choices_round_id_live', 'choices', ['round_id'], unique=True,
                    sqlite_where=LIVE, postgresql_where=LIVE)


def downgrade() -> None:
    connection = op.get_bind()
    superseded = connection.execute(sa.text("SELECT COUNT(*) FROM choices WHERE superseded_at IS NOT NULL")).scalar()
    if superseded:
        raise RuntimeError(f"{superseded} superseded choices exist; below 0006 they would count again beside the "
                           "choices that replaced them: delete them before downgrading below 0006")
    op.drop_index('ix_choices_round_id_live', table_name='choices')
    op.drop_column('choices', 'superseded_at')
