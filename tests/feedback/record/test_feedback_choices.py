"""Choices in the preference record: the pairs a choice implies, supersession, refusals, and idempotency keys.

On SQLite and PostgreSQL, over the `db` fixture and the helpers of test_feedback_store.py.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError

from feedback.ops.integrity import integrity_check
from feedback.record import access, choices, store
from feedback.record.choices import ChoiceInput, ChoiceKind
from feedback.record.db import Database
from feedback.record.errors import Conflict, InputError, NotFound
from feedback.record.models import Choice, PreferencePair

try:
    from tests.feedback.record.test_feedback_store import (  # noqa: F401 - db, pg_template: fixtures
        counts,
        db,
        h,
        new_round,
        new_session,
        pg_template,
    )
    from tests.pg import postgres_url  # the PostgreSQL server fixture
except ImportError:  # tests/ is not importable as a package: pytest put this folder and tests/ on sys.path
    from pg import postgres_url  # noqa: F401
    from test_feedback_store import counts, db, h, new_round, new_session, pg_template  # noqa: F401


# --------------------------------------------------------------------------------------- choices
def test_pairwise_choice_derives_preferred_times_rejected_pairs(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s), n_candidates=5)
        choice, created = choices.record_choice(s, round_id, ChoiceInput(
            ChoiceKind.PAIRWISE, cands[:2], cands[2:], tags=["over-smoothed", "artefacts"], decision_ms=1234))
        assert created and choice.preferred_ids == cands[:2] and choice.rejected_ids == cands[2:]
        choice_id = choice.id
    with db.sessions.begin() as s:
        pairs = s.query(PreferencePair).filter_by(choice_id=choice_id).all()
        assert len(pairs) == 2 * 3
        assert {(p.chosen_candidate_id, p.rejected_candidate_id) for p in pairs} == \
            {(a, b) for a in cands[:2] for b in cands[2:]}
        assert {p.label for p in pairs} == {1.0}
        assert choices.latest_choice(s, round_id).id == choice_id
        assert store.get_round(s, round_id).status == "chosen"
        assert integrity_check(s) == []


def test_tie_gives_all_unordered_pairs_at_half(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s), n_candidates=4)
        choice, _ = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.TIE, cands[:3], selector="human"))
        pairs = [(p.chosen_candidate_id, p.rejected_candidate_id, p.label) for p in choice.pairs]
    assert len(pairs) == 3 and {p[2] for p in pairs} == {0.5}
    assert {frozenset(p[:2]) for p in pairs} == {frozenset(x) for x in [cands[:2], cands[1:3], cands[0:3:2]]}


def test_skip_records_no_pairs_and_latest_choice_wins(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
        assert choices.latest_choice(s, round_id) is None
        choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], [cands[1]],
                                                       selector="piqe+entropy"))
    time.sleep(0.002)
    with db.sessions.begin() as s:
        skip, _ = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.SKIP))
        assert store.get_round(s, round_id).status == "skipped"
    with db.sessions.begin() as s:
        assert choices.latest_choice(s, round_id).id == skip.id
        assert store.count_rows(s)["preference_pairs"] == 1


def test_a_new_choice_supersedes_the_previous_one_and_only_the_latest_is_read(db: Database) -> None:
    """Both choices are kept, the first marked superseded at the time of the second; export, latest_choice and the
    history read the second only; a retry of the first (same key) changes nothing."""
    with db.sessions.begin() as s:
        session_id = new_session(s)
        round_id, cands = new_round(s, session_id)
        first, _ = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]],
                                                                  [cands[1], cands[2]], idempotency_key="page:1"))
        first_id = first.id
    with db.sessions.begin() as s:
        second, created = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[2]], [cands[0]],
                                                                         idempotency_key="page:2"))
        assert created
        second_id = second.id
    with db.sessions.begin() as s:  # SQLite hands back naive UTC, PostgreSQL aware
        naive = lambda moment: moment.replace(tzinfo=None)  # noqa: E731
        assert naive(s.get(Choice, first_id).superseded_at) == naive(s.get(Choice, second_id).created_at)
    with db.sessions.begin() as s:  # a late retry of the first submission records nothing and revives nothing
        again, created = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]],
                                                                        [cands[1], cands[2]], idempotency_key="page:1"))
        assert (again.id, created) == (first_id, False)
    with db.sessions.begin() as s:
        assert choices.latest_choice(s, round_id).id == second_id
        assert s.get(Choice, second_id).superseded_at is None
        rows = list(store.export_pairs(s))
        assert [(r["choice_id"], r["chosen_candidate_id"], r["rejected_candidate_id"]) for r in rows] == \
            [(second_id, cands[2], cands[0])]
        assert choices.superseded_choices(s) == 1 and store.count_rows(s)["choices"] == 2
        assert store.count_rows(s)["preference_pairs"] == 3  # the superseded pairs are kept, not exported
        history = access.session_history(s, session_id)
        assert history[0]["pairs"] == 1
        assert integrity_check(s) == []


def test_the_database_allows_one_live_choice_per_round(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
        choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], [cands[1]]))
    with pytest.raises(IntegrityError), db.sessions.begin() as s:  # bypassing record_choice
        s.add(Choice(round_id=round_id, kind="skip", selector="human"))
        s.flush()


INVALID_CHOICES = [
    dict(kind="best"), dict(rejected=[]), dict(preferred=["X", "X"]), dict(overlap=True), dict(tags=["ugly"]),
    dict(tags=["artefacts", "artefacts"]), dict(decision_ms=-1), dict(decision_ms=True), dict(selector=""),
    dict(selector="a b"), dict(idempotency_key="k" * 200), dict(foreign=True),
    dict(kind="tie", preferred=["A"], rejected=[]), dict(kind="skip"), dict(preferred="A"), dict(preferred=[None]),
]


def test_invalid_choices_raise_input_error_and_record_nothing(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
        _, other_cands = new_round(s, new_session(s, "bob"))
    names = {"A": cands[0], "X": cands[1]}
    for bad in INVALID_CHOICES:
        args = dict(preferred=[cands[0]], rejected=[cands[1]], kind="pairwise", tags=[], decision_ms=10,
                    selector="human", idempotency_key=None)
        args.update({k: v for k, v in bad.items() if k not in ("overlap", "foreign")})
        if isinstance(args["preferred"], list):
            args["preferred"] = [names.get(i, i) for i in args["preferred"]]
        if bad.get("overlap"):
            args["rejected"] = [cands[0], cands[2]]
        if bad.get("foreign"):
            args["rejected"] = [other_cands[0]]
        with pytest.raises(InputError):
            with db.sessions.begin() as s:
                choices.record_choice(s, round_id, ChoiceInput(**args))
                pytest.fail(f"accepted invalid choice {bad}")
    assert counts(db)["choices"] == 0 and counts(db)["preference_pairs"] == 0


def test_unknown_ids_raise_not_found(db: Database) -> None:
    with db.sessions.begin() as s:
        with pytest.raises(NotFound):
            choices.record_choice(s, uuid.uuid4().hex, ChoiceInput(ChoiceKind.SKIP))
        with pytest.raises(NotFound):
            store.round_lineage(s, "nope")
        with pytest.raises(NotFound):
            store.session_by_token_hash(s, h("unknown"))
        with pytest.raises(InputError):  # a raw token instead of its hash
            store.create_annotator_session(s, h("p"), "my-secret-token")


def test_the_kind_is_typed_and_a_bad_kind_is_refused_with_the_kinds_allowed(db: Database) -> None:
    """A ChoiceInput's kind is a ChoiceKind (its value is converted); anything else is refused when it is made."""
    assert ChoiceInput("skip").kind is ChoiceKind.SKIP and ChoiceInput(ChoiceKind.TIE).kind is ChoiceKind.TIE
    for bad in ("best", "Pairwise", "", None, True, ["tie"]):
        with pytest.raises(InputError, match=r"kind must be one of pairwise, tie, skip, got "):
            ChoiceInput(bad)
    with db.sessions.begin() as s:  # a tie naming no candidate ties every candidate of the round ("all similar")
        round_id, cands = new_round(s, new_session(s), n_candidates=3)
    with db.sessions.begin() as s:
        tie, _ = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.TIE))
    positions = {c: i for i, c in enumerate(cands)}
    assert tie.kind is ChoiceKind.TIE and sorted(tie.preferred_ids, key=positions.get) == cands
    assert len(tie.pairs) == 3 and {p.label for p in tie.pairs} == {0.5}


def _statements(db: Database) -> tuple[list[str], list[int]]:
    """(every SQL statement the engine sends, a one-element count of transactions begun), filled from now on."""
    sent: list[str] = []
    begun = [0]
    event.listen(db.engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: sent.append(sql.split()[0].upper()))
    event.listen(db.engine, "begin", lambda _conn: begun.__setitem__(0, begun[0] + 1))
    return sent, begun


def test_a_vote_is_one_write_transaction_of_a_few_statements(db: Database) -> None:
    """One SELECT (round, session, candidates, the key's choice), then the supersede UPDATE, one INSERT each for the
    choice, its members and its pairs (executemany), and the round's status UPDATE only when it changes; the
    owner check runs inside. A retry with the same key only reads; a refused caller writes nothing."""
    with db.sessions.begin() as s:
        session_id = new_session(s)
        round_id, cands = new_round(s, session_id)
    sent, begun = _statements(db)
    owners: list[str] = []
    writes = ["UPDATE", "INSERT", "INSERT", "INSERT"]
    if db.engine.dialect.name != "sqlite":  # the key looked up again once the round's row is locked; a savepoint
        writes = ["SELECT", "SAVEPOINT", *writes, "RELEASE"]
    for n, key in enumerate(("vote-1", "vote-2")):
        sent.clear()
        begun[0] = 0
        with db.sessions.begin() as s:
            choice, created = choices.record_choice(s, round_id, ChoiceInput(
                ChoiceKind.PAIRWISE, [cands[0]], cands[1:], idempotency_key=key), check_owner=owners.append)
        statements = [x for x in sent if x not in ("BEGIN", "COMMIT")]
        assert created and begun == [1] and statements == ["SELECT", *writes] + (["UPDATE"] if n == 0 else [])
        assert choice.superseded == n and len(choice.pairs) == 3 and choice.live
    assert owners == [session_id, session_id]
    sent.clear()
    with db.sessions.begin() as s:  # a retry: one read, nothing written
        again, created = choices.record_choice(s, round_id, ChoiceInput(
            ChoiceKind.PAIRWISE, [cands[0]], cands[1:], idempotency_key="vote-2"))
    assert (again.id, created) == (choice.id, False) and "INSERT" not in sent and "UPDATE" not in sent

    def refuse(_session_id: str) -> None:
        raise PermissionError("another session's round")

    before = counts(db)
    with pytest.raises(PermissionError), db.sessions.begin() as s:
        choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.SKIP), check_owner=refuse)
    assert counts(db) == before


# ---------------------------------------------------------------------------------- idempotency
def test_retry_with_the_same_key_records_once(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
    results = []
    for _ in range(3):
        with db.sessions.begin() as s:
            choice, created = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]],
                                                                             cands[1:3], idempotency_key="evt-1"))
            results.append((choice.id, created))
    assert [c for _, c in results] == [True, False, False] and len({i for i, _ in results}) == 1
    assert counts(db)["choices"] == 1 and counts(db)["preference_pairs"] == 2
    with pytest.raises(Conflict):
        with db.sessions.begin() as s:
            choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[1]], [cands[0]],
                                                           idempotency_key="evt-1"))
    with db.sessions.begin() as s:  # no key: every call is a new choice
        choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], [cands[3]]))
        choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], [cands[3]]))
    assert counts(db)["choices"] == 3


def test_region_marks_are_stored_with_the_choice_in_the_shape_study_votes_use(db: Database) -> None:
    """Boxes on the k-th candidate (display order, from 1) are stored on the choice, in the same transaction, as
    study votes store theirs: {"on", "position", "x", "y", "w", "h", "tag"}; invalid boxes record nothing."""
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))  # positions 0..3 in this order
    boxes = [{"on": "2", "x": 0.1, "y": 0.2, "w": 0.3, "h": 0.4, "tag": "artefacts"},
             {"on": 4, "x": 0.5, "y": 0.5, "w": 0.5, "h": 0.5}]
    with db.sessions.begin() as s:
        choice, created = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], cands[1:],
                                                                         regions=boxes, idempotency_key="with-boxes"))
    with db.sessions.begin() as s:
        stored = s.get(Choice, choice.id).regions
    assert created and stored == [
        {"on": "2", "position": 1, "x": 0.1, "y": 0.2, "w": 0.3, "h": 0.4, "tag": "artefacts"},
        {"on": "4", "position": 3, "x": 0.5, "y": 0.5, "w": 0.5, "h": 0.5, "tag": None}]
    with db.sessions.begin() as s:  # a retry with the same boxes (or none sent) returns the first
        again, created = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], cands[1:],
                                                                        regions=boxes, idempotency_key="with-boxes"))
        assert (again.id, created) == (choice.id, False)
        again, created = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], cands[1:],
                                                                        idempotency_key="with-boxes"))
        assert (again.id, created) == (choice.id, False)
    with pytest.raises(Conflict, match="different choice"):  # the same key with other boxes is another choice
        with db.sessions.begin() as s:
            choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], cands[1:],
                                                           regions=boxes[:1], idempotency_key="with-boxes"))
    before = counts(db)
    for bad, needle in [({"on": "5"}, "'on' is '5'"), ({"on": "left"}, "a position '1'..'4'"),
                        ({"x": 0.8}, "leaves the image"), ({"w": 0}, "leaves the image"),
                        ({"tag": "ugly"}, "not offered"), ({"z": 1}, "regions must be"), ({"h": "1"}, "h must be")]:
        with pytest.raises(InputError, match=needle):
            with db.sessions.begin() as s:
                choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[1]], [cands[0]],
                                                               regions=[{**boxes[0], **bad}]))
    with pytest.raises(InputError, match="at most 20 boxes"):
        with db.sessions.begin() as s:
            choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[1]], [cands[0]],
                                                           regions=boxes * 11))
    assert counts(db) == before
    with db.sessions.begin() as s:  # no boxes ([] or None) stays SQL NULL, as study votes without marks
        plain, _ = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[1]], [cands[0]],
                                                                  regions=[]))
        assert s.scalar(text("SELECT COUNT(*) FROM choices WHERE regions IS NULL")) == 1
        assert plain.regions is None


def test_racing_retries_with_the_same_key_record_once(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
    n_threads = 6
    barrier = threading.Barrier(n_threads)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def retry() -> None:
        try:
            barrier.wait()
            with db.sessions.begin() as s:
                choice, created = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, cands[:2],
                                                                                 cands[2:], idempotency_key="race"))
                results.append((choice.id, created))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=retry) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == n_threads and sum(created for _, created in results) == 1
    assert len({cid for cid, _ in results}) == 1
    assert counts(db)["choices"] == 1 and counts(db)["preference_pairs"] == 4


def test_retry_waiting_on_an_uncommitted_first_attempt_returns_it(db: Database) -> None:
    """Second request arrives while the first is still in its transaction (PostgreSQL: unique-index wait)."""
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
    outcome: dict[str, object] = {}

    def second() -> None:
        try:
            with db.sessions.begin() as s2:
                outcome["result"] = choices.record_choice(s2, round_id, ChoiceInput(
                    ChoiceKind.PAIRWISE, [cands[0]], [cands[1]], idempotency_key="slow"))[1]
        except BaseException as exc:
            outcome["error"] = exc

    with db.sessions.begin() as s:
        _, created = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], [cands[1]],
                                                                    idempotency_key="slow"))
        s.flush()
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)  # let the second request reach its lookup/insert and block
    thread.join(30)
    assert created and "error" not in outcome, outcome.get("error")
    assert outcome["result"] is False
    assert counts(db)["choices"] == 1
