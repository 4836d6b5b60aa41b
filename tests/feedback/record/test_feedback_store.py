"""The preference record on SQLite (file under tmp_path) and on a real PostgreSQL server the tests start."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from feedback.ops.integrity import integrity_check
from feedback.record import access, store
from feedback.record.db import DB_URL_ENV, Database, make_engine, open_database, resolve_db_url, upgrade_to_head
from feedback.record.errors import Conflict, InputError, NotFound
from feedback.record.images import ImageStore
from feedback.record.models import Base, Candidate, Choice, PreferencePair
from feedback.record.store import CandidateSpec

try:
    from tests.pg import postgres_url  # the PostgreSQL server fixture
except ImportError:  # tests/ is not importable as a package: pytest put tests/ itself on sys.path
    from pg import postgres_url  # noqa: F401


def h(label: str) -> str:
    """A fake image id for tests."""
    return hashlib.sha256(label.encode()).hexdigest()


@pytest.fixture(scope="module")
def pg_template(postgres_url: str) -> Iterator[tuple[str, str]]:
    """(server URL, name of a migrated template database): copying it is faster than migrating per test."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"tmpl_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    template = open_database(postgres_url.rsplit("/", 1)[0] + "/" + name)
    template.engine.dispose()  # a template must have no open connections
    yield postgres_url, name
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE {name}")
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:
    """A migrated, empty database: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        database = open_database(f"sqlite:///{tmp_path / 'ttpo.sqlite3'}")
        yield database
        database.engine.dispose()
        return
    server_url, template = request.getfixturevalue("pg_template")
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    database = open_database(server_url.rsplit("/", 1)[0] + "/" + name)  # migrating is a no-op here
    yield database
    database.engine.dispose()
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE {name}")
    admin.dispose()


def new_session(s, name: str = "ada") -> str:
    return store.create_annotator_session(s, pseudonym=h("pseud" + name), token_hash=h("tok" + uuid.uuid4().hex)).id


def new_round(s, session_id: str, n_candidates: int = 4, parent_round_id: str | None = None,
              source_image_id: str | None = None) -> tuple[str, list[str]]:
    if source_image_id is None:
        source_image_id = store.add_source_image(
            s, image_hash=h("gt"), width=64, height=48, origin="sample", session_id=session_id,
            degradation_spec="noise:25", degradation_seed=7, degradation_params={"sigma": 25},
            gt_image_hash=h("gt"), degraded_image_hash=h("degraded")).id
    rnd = store.create_round(
        s, session_id=session_id, source_image_id=source_image_id, parent_round_id=parent_round_id,
        backbone_name="sipl-small", backbone_weights_hash=h("w"), prior_id="pixel-unet", prior_weights_hash=h("p"),
        params={"steps": 2, "strength": 0.4}, seeds=[1, 2, 3], code_version="abc123", device="cpu",
        dtype="float32", stage_seconds={"restore": 0.1}, restored_image_hash=h("restored"))
    specs = [CandidateSpec(image_hash=h(f"cand{rnd.id}{i}"), method="sdedit", seed=2**40 + i, strength=0.4,
                           scores={"piqe": 30.0 + i}) for i in range(n_candidates - 1)]
    specs.append(CandidateSpec(image_hash=h("restored"), method="restored", is_restored=True))
    return rnd.id, [c.id for c in store.add_candidates(s, rnd.id, specs)]


def counts(db: Database) -> dict[str, int]:
    with db.sessions.begin() as s:
        return store.count_rows(s)


# ---------------------------------------------------------------------------------------- schema
def test_migrations_create_the_models_schema(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} | {"alembic_version"} == tables
    with db.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"migration and models differ: {diff}"
    assert upgrade_to_head(db.engine) == "0006"  # idempotent on an up-to-date database


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError):
        with db.sessions.begin() as s:
            s.add(Candidate(round_id="no-such-round", image_hash=h("x"), method="m", position=0))
    assert counts(db)["candidates"] == 0


def test_sqlite_runs_in_wal_mode_with_busy_timeout(db: Database) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite pragmas")
    with db.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_database_url_resolution_and_refusals(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DB_URL_ENV, raising=False)
    assert resolve_db_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'ttpo.sqlite3'}"
    monkeypatch.setenv(DB_URL_ENV, "sqlite:////elsewhere.sqlite3")
    assert resolve_db_url(None, tmp_path) == "sqlite:////elsewhere.sqlite3"
    assert resolve_db_url("postgresql://u@h/db", tmp_path) == "postgresql://u@h/db"  # --db wins
    monkeypatch.delenv(DB_URL_ENV)
    with pytest.raises(InputError):
        resolve_db_url(None, None)
    for bad in ["sqlite://", "sqlite:///:memory:", "mysql://u@h/db"]:
        with pytest.raises(InputError):
            make_engine(bad)
    url = f"sqlite:///{tmp_path / 'by-url.sqlite3'}"
    assert upgrade_to_head(url) == "0006" and upgrade_to_head(url) == "0006"


def test_the_database_layer_never_imports_torch() -> None:
    code = ("import sys, feedback.record.db, feedback.record.store, feedback.record.images, feedback.record.pseudonym, feedback.ops.integrity; "
            "sys.exit(int('torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --------------------------------------------------------------------------------------- choices
def test_pairwise_choice_derives_preferred_times_rejected_pairs(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s), n_candidates=5)
        choice, created = store.record_choice(s, round_id, cands[:2], cands[2:], "pairwise",
                                              tags=["over-smoothed", "artefacts"], decision_ms=1234)
        assert created and choice.preferred_ids == cands[:2] and choice.rejected_ids == cands[2:]
        choice_id = choice.id
    with db.sessions.begin() as s:
        pairs = s.query(PreferencePair).filter_by(choice_id=choice_id).all()
        assert len(pairs) == 2 * 3
        assert {(p.chosen_candidate_id, p.rejected_candidate_id) for p in pairs} == \
            {(a, b) for a in cands[:2] for b in cands[2:]}
        assert {p.label for p in pairs} == {1.0}
        assert store.latest_choice(s, round_id).id == choice_id
        assert store.get_round(s, round_id).status == "chosen"
        assert integrity_check(s) == []


def test_tie_gives_all_unordered_pairs_at_half(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s), n_candidates=4)
        choice, _ = store.record_choice(s, round_id, cands[:3], [], "tie", selector="human")
        pairs = [(p.chosen_candidate_id, p.rejected_candidate_id, p.label) for p in choice.pairs]
    assert len(pairs) == 3 and {p[2] for p in pairs} == {0.5}
    assert {frozenset(p[:2]) for p in pairs} == {frozenset(x) for x in [cands[:2], cands[1:3], cands[0:3:2]]}


def test_skip_records_no_pairs_and_latest_choice_wins(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
        assert store.latest_choice(s, round_id) is None
        store.record_choice(s, round_id, [cands[0]], [cands[1]], "pairwise", selector="piqe+entropy")
    time.sleep(0.002)
    with db.sessions.begin() as s:
        skip, _ = store.record_choice(s, round_id, [], [], "skip")
        assert store.get_round(s, round_id).status == "skipped"
    with db.sessions.begin() as s:
        assert store.latest_choice(s, round_id).id == skip.id
        assert store.count_rows(s)["preference_pairs"] == 1


def test_a_new_choice_supersedes_the_previous_one_and_only_the_latest_is_read(db: Database) -> None:
    """Both choices are kept, the first marked superseded at the time of the second; export, latest_choice and the
    history read the second only; a retry of the first (same key) changes nothing."""
    with db.sessions.begin() as s:
        session_id = new_session(s)
        round_id, cands = new_round(s, session_id)
        first, _ = store.record_choice(s, round_id, [cands[0]], [cands[1], cands[2]], "pairwise",
                                       idempotency_key="page:1")
        first_id = first.id
    with db.sessions.begin() as s:
        second, created = store.record_choice(s, round_id, [cands[2]], [cands[0]], "pairwise",
                                              idempotency_key="page:2")
        assert created
        second_id = second.id
    with db.sessions.begin() as s:  # SQLite hands back naive UTC, PostgreSQL aware
        naive = lambda moment: moment.replace(tzinfo=None)  # noqa: E731
        assert naive(s.get(Choice, first_id).superseded_at) == naive(s.get(Choice, second_id).created_at)
    with db.sessions.begin() as s:  # a late retry of the first submission records nothing and revives nothing
        again, created = store.record_choice(s, round_id, [cands[0]], [cands[1], cands[2]], "pairwise",
                                             idempotency_key="page:1")
        assert (again.id, created) == (first_id, False)
    with db.sessions.begin() as s:
        assert store.latest_choice(s, round_id).id == second_id
        assert s.get(Choice, second_id).superseded_at is None
        rows = list(store.export_pairs(s))
        assert [(r["choice_id"], r["chosen_candidate_id"], r["rejected_candidate_id"]) for r in rows] == \
            [(second_id, cands[2], cands[0])]
        assert store.superseded_choices(s) == 1 and store.count_rows(s)["choices"] == 2
        assert store.count_rows(s)["preference_pairs"] == 3  # the superseded pairs are kept, not exported
        history = access.session_history(s, session_id)
        assert history[0]["pairs"] == 1
        assert integrity_check(s) == []


def test_the_database_allows_one_live_choice_per_round(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
        store.record_choice(s, round_id, [cands[0]], [cands[1]], "pairwise")
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
                store.record_choice(s, round_id, **args)
                pytest.fail(f"accepted invalid choice {bad}")
    assert counts(db)["choices"] == 0 and counts(db)["preference_pairs"] == 0


def test_unknown_ids_raise_not_found(db: Database) -> None:
    with db.sessions.begin() as s:
        with pytest.raises(NotFound):
            store.record_choice(s, uuid.uuid4().hex, [], [], "skip")
        with pytest.raises(NotFound):
            store.round_lineage(s, "nope")
        with pytest.raises(NotFound):
            store.session_by_token_hash(s, h("unknown"))
        with pytest.raises(InputError):  # a raw token instead of its hash
            store.create_annotator_session(s, h("p"), "my-secret-token")


# ---------------------------------------------------------------------------------- idempotency
def test_retry_with_the_same_key_records_once(db: Database) -> None:
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
    results = []
    for _ in range(3):
        with db.sessions.begin() as s:
            choice, created = store.record_choice(s, round_id, [cands[0]], cands[1:3], "pairwise",
                                                  idempotency_key="evt-1")
            results.append((choice.id, created))
    assert [c for _, c in results] == [True, False, False] and len({i for i, _ in results}) == 1
    assert counts(db)["choices"] == 1 and counts(db)["preference_pairs"] == 2
    with pytest.raises(Conflict):
        with db.sessions.begin() as s:
            store.record_choice(s, round_id, [cands[1]], [cands[0]], "pairwise", idempotency_key="evt-1")
    with db.sessions.begin() as s:  # no key: every call is a new choice
        store.record_choice(s, round_id, [cands[0]], [cands[3]], "pairwise")
        store.record_choice(s, round_id, [cands[0]], [cands[3]], "pairwise")
    assert counts(db)["choices"] == 3


def test_region_marks_are_stored_with_the_choice_in_the_shape_study_votes_use(db: Database) -> None:
    """Boxes on the k-th candidate (display order, from 1) are stored on the choice, in the same transaction, as
    study votes store theirs: {"on", "position", "x", "y", "w", "h", "tag"}; invalid boxes record nothing."""
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))  # positions 0..3 in this order
    boxes = [{"on": "2", "x": 0.1, "y": 0.2, "w": 0.3, "h": 0.4, "tag": "artefacts"},
             {"on": 4, "x": 0.5, "y": 0.5, "w": 0.5, "h": 0.5}]
    with db.sessions.begin() as s:
        choice, created = store.record_choice(s, round_id, [cands[0]], cands[1:], "pairwise", regions=boxes,
                                              idempotency_key="with-boxes")
    with db.sessions.begin() as s:
        stored = s.get(Choice, choice.id).regions
    assert created and stored == [
        {"on": "2", "position": 1, "x": 0.1, "y": 0.2, "w": 0.3, "h": 0.4, "tag": "artefacts"},
        {"on": "4", "position": 3, "x": 0.5, "y": 0.5, "w": 0.5, "h": 0.5, "tag": None}]
    with db.sessions.begin() as s:  # a retry with the same boxes (or none sent) returns the first
        again, created = store.record_choice(s, round_id, [cands[0]], cands[1:], "pairwise", regions=boxes,
                                             idempotency_key="with-boxes")
        assert (again.id, created) == (choice.id, False)
        again, created = store.record_choice(s, round_id, [cands[0]], cands[1:], "pairwise",
                                             idempotency_key="with-boxes")
        assert (again.id, created) == (choice.id, False)
    with pytest.raises(Conflict, match="different choice"):  # the same key with other boxes is another choice
        with db.sessions.begin() as s:
            store.record_choice(s, round_id, [cands[0]], cands[1:], "pairwise", regions=boxes[:1],
                                idempotency_key="with-boxes")
    before = counts(db)
    for bad, needle in [({"on": "5"}, "'on' is '5'"), ({"on": "left"}, "a position '1'..'4'"),
                        ({"x": 0.8}, "leaves the image"), ({"w": 0}, "leaves the image"),
                        ({"tag": "ugly"}, "not offered"), ({"z": 1}, "regions must be"), ({"h": "1"}, "h must be")]:
        with pytest.raises(InputError, match=needle):
            with db.sessions.begin() as s:
                store.record_choice(s, round_id, [cands[1]], [cands[0]], "pairwise", regions=[{**boxes[0], **bad}])
    with pytest.raises(InputError, match="at most 20 boxes"):
        with db.sessions.begin() as s:
            store.record_choice(s, round_id, [cands[1]], [cands[0]], "pairwise", regions=boxes * 11)
    assert counts(db) == before
    with db.sessions.begin() as s:  # no boxes ([] or None) stays SQL NULL, as study votes without marks
        plain, _ = store.record_choice(s, round_id, [cands[1]], [cands[0]], "pairwise", regions=[])
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
                choice, created = store.record_choice(s, round_id, cands[:2], cands[2:], "pairwise",
                                                      idempotency_key="race")
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
                outcome["result"] = store.record_choice(s2, round_id, [cands[0]], [cands[1]], "pairwise",
                                                        idempotency_key="slow")[1]
        except BaseException as exc:
            outcome["error"] = exc

    with db.sessions.begin() as s:
        _, created = store.record_choice(s, round_id, [cands[0]], [cands[1]], "pairwise", idempotency_key="slow")
        s.flush()
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)  # let the second request reach its lookup/insert and block
    thread.join(30)
    assert created and "error" not in outcome, outcome.get("error")
    assert outcome["result"] is False
    assert counts(db)["choices"] == 1


# ------------------------------------------------------------------------------ lineage, export
def test_lineage_walks_parents_and_refinements_link_rounds(db: Database) -> None:
    with db.sessions.begin() as s:
        session_id = new_session(s)
        r0, c0 = new_round(s, session_id)
        source = store.get_round(s, r0).source_image_id
        choice0, _ = store.record_choice(s, r0, [c0[0]], [c0[1]], "pairwise")
        refinement = store.record_refinement(s, r0, choice0.id, h("refined0"), {"guidance": 2.0}, 1.5)
        r1, _ = new_round(s, session_id, parent_round_id=r0, source_image_id=source)
        store.link_next_round(s, refinement.id, r1)
        r2, _ = new_round(s, session_id, parent_round_id=r1, source_image_id=source)
        lineage = store.round_lineage(s, r2)
        assert [r.id for r in lineage] == [r0, r1, r2] and [r.round_index for r in lineage] == [0, 1, 2]
        assert store.get_round(s, r0).status == "refined"
        with pytest.raises(InputError):  # choice of another round
            store.record_refinement(s, r1, choice0.id, h("x"), {}, 1.0)
        with pytest.raises(InputError):  # r2 is not a child of r0
            store.link_next_round(s, refinement.id, r2)
        with pytest.raises(InputError):  # parent in another session
            new_round(s, new_session(s, "eve"), parent_round_id=r0)
        assert integrity_check(s) == []


def test_export_gives_one_row_per_pair_with_images_and_round_metadata(db: Database) -> None:
    with db.sessions.begin() as s:
        session_id = new_session(s)
        r0, c0 = new_round(s, session_id)
        r1, c1 = new_round(s, session_id)
        r2, _ = new_round(s, session_id)
        store.record_choice(s, r0, [c0[0]], c0[1:3], "pairwise", tags=["color-shift"], decision_ms=900)
        store.record_choice(s, r1, c1[:3], [], "tie")
        store.record_choice(s, r2, [], [], "skip")
        rows = list(store.export_pairs(s))
        hashes = {c.id: c.image_hash for c in s.query(Candidate)}
    assert len(rows) == 2 + 3
    assert sorted(r["label"] for r in rows) == [0.5, 0.5, 0.5, 1.0, 1.0]
    first = rows[0]
    assert first["kind"] == "pairwise" and first["reason_tags"] == ["color-shift"] and first["decision_ms"] == 900
    assert first["chosen_image"] == hashes[first["chosen_candidate_id"]]
    assert first["rejected_image"] == hashes[first["rejected_candidate_id"]]
    assert first["backbone_name"] == "sipl-small" and first["seeds"] == [1, 2, 3] and first["params"]["steps"] == 2
    assert first["gt_image"] == h("gt") and first["degraded_image"] == h("degraded")
    assert first["round_id"] == r0 and first["session_id"] == session_id and first["annotator_id"]
    assert first["created_at"].endswith("+00:00")


# ------------------------------------------------------------------------------------- integrity
def test_integrity_check_passes_on_good_data_and_flags_planted_problems(db: Database, tmp_path) -> None:
    images = ImageStore(tmp_path / "data")
    with db.sessions.begin() as s:
        round_id, cands = new_round(s, new_session(s))
        choice, _ = store.record_choice(s, round_id, [cands[0]], cands[1:], "pairwise")
        assert integrity_check(s) == []
        # Every referenced image is missing from the (empty) store.
        assert any("not in the image store" in p for p in integrity_check(s, images))
        victim = s.query(PreferencePair).filter_by(choice_id=choice.id).first().id
    with db.engine.begin() as c:
        c.execute(text("DELETE FROM preference_pairs WHERE id = :id"), {"id": victim})
    with db.sessions.begin() as s:
        problems = integrity_check(s)
    assert any(f"choice {choice.id}" in p and "has 2 preference pair(s), expected 3" in p for p in problems), problems

    # A dangling reference, written with foreign-key enforcement off.
    plant_dangling_candidate(db, cands[3])
    with db.sessions.begin() as s:
        problems = integrity_check(s)
    assert any("candidates.round_id point to missing rounds" in p for p in problems), problems
    assert any(f"names candidate {cands[3]} of another round" in p for p in problems), problems


def plant_dangling_candidate(db: Database, candidate_id: str) -> None:
    """Point a candidate at a round that does not exist, bypassing foreign keys."""
    if db.engine.dialect.name == "sqlite":
        raw = db.engine.raw_connection()  # autocommit mode (see feedback.record.db); pragma only outside a transaction
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA foreign_keys=OFF")
            cursor.execute("UPDATE candidates SET round_id = 'gone' WHERE id = ?", (candidate_id,))
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            raw.close()
        return
    with db.engine.begin() as c:
        c.exec_driver_sql("SET LOCAL session_replication_role = replica")  # skips FK triggers (superuser)
        c.execute(text("UPDATE candidates SET round_id = 'gone' WHERE id = :id"), {"id": candidate_id})


def test_only_pseudonyms_and_token_hashes_reach_the_database(db: Database, tmp_path) -> None:
    from feedback.record.pseudonym import hash_token, new_token, pseudonym

    salt = b"test-salt"
    token = new_token()
    with db.sessions.begin() as s:
        first = store.create_annotator_session(s, pseudonym("Ada Lovelace", salt), hash_token(token))
        again = store.create_annotator_session(s, pseudonym("  ada   LOVELACE", salt), hash_token(new_token()))
        assert first.annotator_id == again.annotator_id and first.id != again.id
        assert store.session_by_token_hash(s, hash_token(token)).id == first.id
    if db.engine.dialect.name == "sqlite":
        db.engine.dispose()  # checkpoint the WAL into the file
        raw = (tmp_path / "ttpo.sqlite3").read_bytes()
        assert b"Lovelace" not in raw and b"lovelace" not in raw and token.encode() not in raw


def test_transient_database_errors_are_retried_and_others_are_not():
    from sqlalchemy.exc import OperationalError as SAOperationalError

    from feedback.record.db import is_transient, retry_transient

    class Orig(Exception):
        def __init__(self, message: str, sqlstate: str | None = None) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    deadlock = SAOperationalError("UPDATE", {}, Orig("deadlock detected", "40P01"))
    locked = SAOperationalError("INSERT", {}, Orig("database is locked"))
    syntax = SAOperationalError("SELEC", {}, Orig("syntax error", "42601"))
    assert is_transient(deadlock) and is_transient(locked) and not is_transient(syntax)
    assert not is_transient(ValueError("not a database error"))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise deadlock
        return "stored"

    assert retry_transient(flaky, attempts=3, backoff_s=0) == "stored" and len(calls) == 3
    calls.clear()
    with pytest.raises(SAOperationalError):
        retry_transient(flaky, attempts=2, backoff_s=0)  # still failing at the last attempt
    assert len(calls) == 2

    def broken():
        calls.append(1)
        raise syntax

    calls.clear()
    with pytest.raises(SAOperationalError):
        retry_transient(broken, attempts=3, backoff_s=0)
    assert len(calls) == 1  # not transient: no second try


def test_sqlite_reads_do_not_wait_for_an_open_write_and_writers_queue(tmp_path) -> None:
    import threading

    from sqlalchemy import text

    db = open_database(f"sqlite:///{tmp_path / 'w.sqlite3'}")
    with db.sessions.begin() as s:
        new_session(s)
    writer = db.sessions()
    writer.begin()
    new_session(writer, "held")
    writer.flush()  # holds SQLite's write lock until commit
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(
        db.reads().execute(text("SELECT count(*) FROM sessions")).scalar()))
    reader.start()
    reader.join(timeout=5)
    assert seen == [1], "a read-only transaction must not wait for the open write"
    done: list[str] = []

    def write(i: int) -> None:
        with db.sessions.begin() as s:
            done.append(new_session(s, f"w{i}"))

    writers = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in writers:
        t.start()
    writer.commit()
    writer.close()
    for t in writers:
        t.join(timeout=30)
    assert len(done) == 8
    with db.reads.begin() as s:
        assert s.execute(text("SELECT count(*) FROM sessions")).scalar() == 10
    db.engine.dispose()


def test_integrity_command_exits_1_on_a_planted_problem(tmp_path, capsys) -> None:
    from feedback.ops.integrity import main as integrity_main

    url = f"sqlite:///{tmp_path / 'i.sqlite3'}"
    db = open_database(url)
    with db.sessions.begin() as s:
        _, cands = new_round(s, new_session(s))
    assert integrity_main(["--db", url, "--no-images"]) == 0
    assert integrity_main(["--db", url, "--data-dir", str(tmp_path)]) == 1  # the images are not stored
    assert "not in the image store" in capsys.readouterr().out
    plant_dangling_candidate(db, cands[0])
    db.engine.dispose()
    assert integrity_main(["--db", url, "--no-images"]) == 1
    assert "point to missing rounds" in capsys.readouterr().out
