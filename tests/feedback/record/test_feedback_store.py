"""The preference record on SQLite (file under tmp_path) and on a real PostgreSQL server the tests start.

Choices and their idempotency are tested in test_feedback_choices.py, over this module's `db` fixture and helpers.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from feedback.ops.integrity import integrity_check
from feedback.record import choices, store
from feedback.record.choices import ChoiceInput, ChoiceKind
from feedback.record.db import DB_URL_ENV, Database, make_engine, open_database, resolve_db_url, upgrade_to_head
from feedback.record.errors import InputError
from feedback.record.images import ImageStore
from feedback.record.models import Base, Candidate, PreferencePair
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
    rnd = store.create_round(s, store.RoundRecord(
        session_id=session_id, source_image_id=source_image_id, parent_round_id=parent_round_id,
        backbone_name="sipl-small", backbone_weights_hash=h("w"), prior_id="pixel-unet", prior_weights_hash=h("p"),
        params={"steps": 2, "strength": 0.4}, seeds=(1, 2, 3), code_version="abc123", device="cpu",
        dtype="float32", stage_seconds={"restore": 0.1}, restored_image_hash=h("restored")))
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


# ------------------------------------------------------------------------------ lineage, export
def test_lineage_walks_parents_and_refinements_link_rounds(db: Database) -> None:
    with db.sessions.begin() as s:
        session_id = new_session(s)
        r0, c0 = new_round(s, session_id)
        source = store.get_round(s, r0).source_image_id
        choice0, _ = choices.record_choice(s, r0, ChoiceInput(ChoiceKind.PAIRWISE, [c0[0]], [c0[1]]))
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
        choices.record_choice(s, r0, ChoiceInput(ChoiceKind.PAIRWISE, [c0[0]], c0[1:3], tags=["color-shift"],
                                                 decision_ms=900))
        choices.record_choice(s, r1, ChoiceInput(ChoiceKind.TIE, c1[:3]))
        choices.record_choice(s, r2, ChoiceInput(ChoiceKind.SKIP))
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
        choice, _ = choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], cands[1:]))
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
