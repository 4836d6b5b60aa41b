"""Consistency checks over the preference record: what foreign keys and constraints alone cannot promise.

`integrity_check(s)` returns a list of human-readable problems (empty when all is well). It finds
dangling references (rows written while SQLite foreign keys were off, or by hand), pairs that do not
match their choice, broken round lineage, and, given the image store, image ids with no file.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from feedback.record.images import is_image_id
from feedback.record.models import (
    Base,
    Candidate,
    Choice,
    ChoiceCandidate,
    PreferencePair,
    Refinement,
    Round,
    SourceImage,
    StudyItem,
)

if TYPE_CHECKING:
    from feedback.record.db import Database
    from feedback.record.images import ImageStore

MAX_PROBLEMS_PER_CHECK = 50


def _dangling_references(s: Session) -> list[str]:
    problems = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            target = fk.column.table.alias("target")
            column = table.c[fk.parent.name]
            query = (select(func.count()).select_from(table.outerjoin(target, column == target.c[fk.column.name]))
                     .where(column.is_not(None), target.c[fk.column.name].is_(None)))
            if n := s.scalar(query):
                problems.append(f"{n} row(s) of {table.name}.{column.name} point to missing {fk.column.table.name}")
    return problems


def _choice_problems(s: Session) -> list[str]:
    problems = []
    roles: dict[str, Counter[str]] = defaultdict(Counter)
    for choice_id, role, n in s.execute(select(ChoiceCandidate.choice_id, ChoiceCandidate.role, func.count())
                                        .group_by(ChoiceCandidate.choice_id, ChoiceCandidate.role)):
        roles[choice_id][role] = n
    pair_counts = {c: n for c, n in s.execute(select(PreferencePair.choice_id, func.count())
                                              .group_by(PreferencePair.choice_id))}
    # A gallery study vote with a worst mark also has "each other image beats the worst" pairs.
    worst_marked = set(s.scalars(select(StudyItem.choice_id).where(StudyItem.worst.is_not(None))))
    for choice_id, kind in s.execute(select(Choice.id, Choice.kind)):
        n_pref, n_rej = roles[choice_id]["preferred"], roles[choice_id]["rejected"]
        n = n_pref + n_rej
        expected = {"pairwise": n_pref * n_rej, "tie": n * (n - 1) // 2}.get(kind, 0)
        if choice_id in worst_marked:
            expected += n_rej - 1
        if kind == "pairwise" and not (n_pref and n_rej):
            problems.append(f"pairwise choice {choice_id} lacks a preferred or rejected candidate")
        if kind == "skip" and n:
            problems.append(f"skip choice {choice_id} names {n} candidate(s)")
        if (got := pair_counts.get(choice_id, 0)) != expected:
            problems.append(f"choice {choice_id} ({kind}, {n_pref} preferred, {n_rej} rejected) has {got} "
                            f"preference pair(s), expected {expected}")

    # Members and pairs must be candidates of the choice's own round.
    q = (select(ChoiceCandidate.choice_id, ChoiceCandidate.candidate_id)
         .join(Choice, Choice.id == ChoiceCandidate.choice_id)
         .join(Candidate, Candidate.id == ChoiceCandidate.candidate_id)
         .where(Candidate.round_id != Choice.round_id))
    problems += [f"choice {c} names candidate {k} of another round" for c, k in s.execute(q)]
    for side in (PreferencePair.chosen_candidate_id, PreferencePair.rejected_candidate_id):
        member = aliased(ChoiceCandidate)
        q = (select(PreferencePair.id, side).join(member, and_(member.choice_id == PreferencePair.choice_id,
                                                               member.candidate_id == side), isouter=True)
             .where(member.choice_id.is_(None)))
        problems += [f"preference pair {p} uses candidate {k} that its choice does not name" for p, k in s.execute(q)]
    q = (select(PreferencePair.id, Choice.kind, PreferencePair.label).join(Choice)
         .where(((Choice.kind == "pairwise") & (PreferencePair.label != 1.0))
                | ((Choice.kind == "tie") & (PreferencePair.label != 0.5))))
    problems += [f"preference pair {p} of a {k} choice has label {lab}" for p, k, lab in s.execute(q)]
    return problems


def _round_problems(s: Session) -> list[str]:
    problems = []
    parent = aliased(Round)
    q = (select(Round.id, Round.round_index, Round.session_id, parent.round_index, parent.session_id)
         .join(parent, parent.id == Round.parent_round_id))
    for rid, index, session_id, p_index, p_session in s.execute(q):
        if session_id != p_session:
            problems.append(f"round {rid} has a parent in another session")
        if index != p_index + 1:
            problems.append(f"round {rid} has index {index}, expected parent's index + 1 = {p_index + 1}")
    # Indices that rise by one from 0 along parent links also rule out cycles.
    q = select(Round.id, Round.round_index).where(Round.parent_round_id.is_(None), Round.round_index != 0)
    problems += [f"round {rid} has no parent but index {index}" for rid, index in s.execute(q)]

    q = (select(Refinement.id).join(Choice, Choice.id == Refinement.choice_id)
         .where(Choice.round_id != Refinement.round_id))
    problems += [f"refinement {r} is guided by a choice of another round" for r in s.scalars(q)]
    nxt = aliased(Round)
    q = (select(Refinement.id).join(nxt, nxt.id == Refinement.next_round_id)
         .where((nxt.parent_round_id != Refinement.round_id) | nxt.parent_round_id.is_(None)))
    problems += [f"refinement {r} points to a next round that is not a child of its round" for r in s.scalars(q)]
    return problems


def _image_columns() -> list:
    return [SourceImage.image_hash, SourceImage.gt_image_hash, SourceImage.degraded_image_hash,
            Round.restored_image_hash, Candidate.image_hash, Refinement.result_image_hash]


def _missing_images(s: Session, images: ImageStore) -> list[str]:
    problems = []
    for column in _image_columns():
        missing = [h for h in s.scalars(select(column).where(column.is_not(None)).distinct())
                   if not is_image_id(h) or not images.exists(h)]
        if missing:
            problems.append(f"{len(missing)} image(s) of {column.class_.__tablename__}.{column.key} are not in the "
                            f"image store, e.g. {missing[0]}")
    return problems


def integrity_check(s: Session, images: ImageStore | None = None) -> list[str]:
    """Problems found in the record (empty list when consistent); with `images`, also missing image files."""
    problems: list[str] = []
    for check in (_dangling_references, _choice_problems, _round_problems):
        problems += check(s)[:MAX_PROBLEMS_PER_CHECK]
    if images is not None:
        problems += _missing_images(s, images)
    return problems


def database_check(db: Database, images: ImageStore | None = None) -> list[str]:
    """`integrity_check` in a read-only transaction, plus SQLite's own page check on SQLite files."""
    with db.reads.begin() as s:
        problems = integrity_check(s, images)
        if db.engine.dialect.name == "sqlite":
            status = s.connection().exec_driver_sql("PRAGMA integrity_check").scalar()
            if status != "ok":
                problems.append(f"SQLite integrity_check: {status}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m feedback.ops.integrity --db URL [--data-dir DIR]`: print problems; exit 1 when there are any."""
    import argparse
    import sys

    from feedback.record.db import open_database, resolve_db_url
    from feedback.record.images import ImageStore  # noqa: F811 - at run time, not only for type checking

    parser = argparse.ArgumentParser(prog="python -m feedback.ops.integrity", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: $TTPO_DB_URL or SQLite in --data-dir)")
    parser.add_argument("--data-dir", default="data", help="folder holding images/ (also checks every image file)")
    parser.add_argument("--no-images", action="store_true", help="skip the check of image files")
    args = parser.parse_args(argv)
    db = open_database(resolve_db_url(args.db, args.data_dir), migrate=False)
    try:
        problems = database_check(db, None if args.no_images else ImageStore(args.data_dir))
    finally:
        db.engine.dispose()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
