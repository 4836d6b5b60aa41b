"""Migrations 0002 (studies) and 0003 (study status) on databases that already hold data, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from feedback.record.db import _alembic_config, make_engine, upgrade_to_head

try:
    from tests.pg import postgres_url
except ImportError:  # tests/ is not importable as a package: pytest put tests/ itself on sys.path
    from pg import postgres_url  # noqa: F401

NEW_CHOICE_COLUMNS = {"zoom_count", "viewport_w", "viewport_h", "device_pixel_ratio", "consent_version"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.sqlite3'}"
        return
    server = request.getfixturevalue("postgres_url")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"mig_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield server.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


def _migrate(engine, revision: str, down: bool = False) -> None:
    with engine.begin() as connection:
        (command.downgrade if down else command.upgrade)(_alembic_config(connection), revision)


def test_0002_keeps_existing_votes_and_downgrades(url: str) -> None:
    engine = make_engine(url)
    try:
        _migrate(engine, "0001")
        h = hashlib.sha256(b"x").hexdigest()
        now = "2026-01-01 00:00:00+00:00"
        with engine.begin() as c:
            c.execute(text("INSERT INTO annotators VALUES ('a', :h, :t)"), {"h": h, "t": now})
            c.execute(text("INSERT INTO sessions VALUES ('s', 'a', :h, :t, NULL, NULL)"), {"h": h, "t": now})
            c.execute(text("INSERT INTO source_images (id, image_hash, width, height, origin, created_at) "
                           "VALUES ('i', :h, 8, 8, 'upload', :t)"), {"h": h, "t": now})
            c.execute(text("INSERT INTO rounds (id, session_id, source_image_id, round_index, backbone_name, params, "
                           "seeds, code_version, device, dtype, stage_seconds, status, created_at) VALUES "
                           "('r', 's', 'i', 0, 'nlm', '{}', '[]', 'v', 'cpu', 'float32', '{}', 'chosen', :t)"),
                      {"t": now})
            c.execute(text("INSERT INTO choices (id, round_id, kind, reason_tags, selector, created_at) "
                           "VALUES ('c', 'r', 'skip', '[]', 'human', :t)"), {"t": now})
        _migrate(engine, "0002")
        inspector = inspect(engine)
        assert {"studies", "participants", "study_items"} <= set(inspector.get_table_names())
        assert NEW_CHOICE_COLUMNS <= {c["name"] for c in inspector.get_columns("choices")}
        with engine.connect() as c:
            row = c.execute(text("SELECT kind, zoom_count, consent_version FROM choices WHERE id = 'c'")).one()
        assert tuple(row) == ("skip", None, None)
        _migrate(engine, "0001", down=True)
        inspector = inspect(engine)
        assert "studies" not in inspector.get_table_names()
        assert not NEW_CHOICE_COLUMNS & {c["name"] for c in inspector.get_columns("choices")}
        with engine.connect() as c:
            assert c.execute(text("SELECT COUNT(*) FROM choices")).scalar() == 1
    finally:
        engine.dispose()


def test_0003_makes_existing_studies_active_and_checks_the_status(url: str) -> None:
    engine = make_engine(url)
    try:
        _migrate(engine, "0002")
        with engine.begin() as c:
            c.execute(text("INSERT INTO studies (id, name, definition, consent_version, stimuli, created_at) "
                           "VALUES ('st', 'old', '{}', 'v1', :stimuli, '2026-01-01 00:00:00+00:00')"),
                      {"stimuli": '[{"image": 0}, {"image": 1}, {"image": 2}]'})
        _migrate(engine, "0003")
        with engine.connect() as c:
            row = c.execute(text("SELECT status, progress_done, progress_total, error, inputs FROM studies")).one()
        assert tuple(row) == ("active", 3, 3, None, None)
        for bad in ("status = 'paused'", "progress_done = 4"):
            with pytest.raises(IntegrityError), engine.begin() as c:
                c.execute(text(f"UPDATE studies SET {bad}"))
        with engine.begin() as c:
            c.execute(text("INSERT INTO studies (id, name, definition, consent_version, stimuli, created_at, status, "
                           "progress_done, progress_total) VALUES ('p', 'new', '{}', 'v1', '[]', "
                           "'2026-01-02 00:00:00+00:00', 'preparing', 0, 2)"))
        with pytest.raises(RuntimeError, match="1 studies are preparing or failed"):
            _migrate(engine, "0002", down=True)
        with engine.begin() as c:
            c.execute(text("DELETE FROM studies WHERE id = 'p'"))
        _migrate(engine, "0002", down=True)
        assert "status" not in {c["name"] for c in inspect(engine).get_columns("studies")}
        with engine.connect() as c:
            assert c.execute(text("SELECT COUNT(*) FROM studies")).scalar() == 1
    finally:
        engine.dispose()


def test_0004_allows_gallery_items_and_refuses_to_drop_them(url: str) -> None:
    engine = make_engine(url)
    try:
        _migrate(engine, "0004")
        columns = {c["name"]: c for c in inspect(engine).get_columns("study_items")}
        assert {"gallery", "worst"} <= set(columns) and columns["left_image_hash"]["nullable"]
        checks = {c["name"] for c in inspect(engine).get_check_constraints("study_items")}
        assert {"ck_study_items_answer", "ck_study_items_worst", "ck_study_items_shown"} <= checks
    finally:
        engine.dispose()


def test_0005_records_samplers_regions_and_screen_outs_and_refuses_to_drop_them(url: str) -> None:
    """Existing items become 'latin'; a sampler outside the table and a status outside the life cycle are refused;
    downgrading with adaptive items is refused, without them it drops the columns."""
    engine = make_engine(url)
    try:
        _migrate(engine, "0004")
        with engine.begin() as c:  # a study with one participant and one pairwise item, as 0004 stores them
            c.execute(text("INSERT INTO annotators (id, pseudonym, created_at) VALUES ('a', 'p', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO sessions (id, annotator_id, token_hash, created_at) "
                           "VALUES ('s', 'a', 't', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO source_images (id, image_hash, width, height, origin, created_at) "
                           "VALUES ('i', :h, 8, 8, 'study', CURRENT_TIMESTAMP)"), {"h": "0" * 64})
            c.execute(text("INSERT INTO rounds (id, session_id, source_image_id, round_index, backbone_name, params, "
                           "seeds, code_version, device, dtype, stage_seconds, status, created_at) VALUES ('r', 's', "
                           "'i', 0, 'study', '{}', '[]', 'x', 'cpu', 'float32', '{}', 'candidates', "
                           "CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO studies (id, name, definition, consent_version, stimuli, created_at, status, "
                           "progress_done, progress_total) VALUES ('st', 'n', '{}', 'v1', '[]', CURRENT_TIMESTAMP, "
                           "'active', 0, 0)"))
            c.execute(text("INSERT INTO participants (id, study_id, session_id, participant_index, consent_version, "
                           "completion_code, status, created_at) VALUES ('p', 'st', 's', 0, 'v1', 'C', 'active', "
                           "CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO study_items (id, participant_id, position, stimulus, round_id, "
                           "left_image_hash, right_image_hash, left_condition, right_condition, is_repeat, "
                           "is_attention_check) VALUES ('it', 'p', 0, 0, 'r', :h, :h, 'a', 'b', false, false)"),
                      {"h": "1" * 64})
        assert upgrade_to_head(engine) in ("0005", "0006")
        with engine.connect() as c:
            assert c.execute(text("SELECT sampler, sampler_score FROM study_items")).one() == ("latin", None)
        assert "regions" in {c["name"] for c in inspect(engine).get_columns("choices")}
        with pytest.raises(IntegrityError), engine.begin() as c:
            c.execute(text("UPDATE study_items SET sampler = 'ucb'"))
        with engine.begin() as c:
            c.execute(text("UPDATE participants SET screened_out_at = CURRENT_TIMESTAMP"))
            c.execute(text("UPDATE study_items SET sampler = 'adaptive', sampler_score = 0.4, sampler_votes = 3"))
        with pytest.raises(RuntimeError, match="1 adaptive study items"):
            _migrate(engine, "0004", down=True)
        with engine.begin() as c:
            c.execute(text("UPDATE participants SET screened_out_at = NULL"))
            c.execute(text("UPDATE study_items SET sampler = 'latin'"))
        _migrate(engine, "0004", down=True)
        assert "sampler" not in {c["name"] for c in inspect(engine).get_columns("study_items")}
        with engine.connect() as c:
            assert c.execute(text("SELECT COUNT(*) FROM study_items")).scalar() == 1
    finally:
        engine.dispose()


def test_0006_marks_all_but_the_latest_choice_of_a_round_superseded_and_refuses_to_drop_them(url: str) -> None:
    """A round with three choices (as 0005 stored corrections: side by side) keeps them all; the first two are
    superseded at the time of the next; a round with one choice keeps it live; downgrading is refused while
    superseded choices exist."""
    engine = make_engine(url)
    try:
        _migrate(engine, "0005")
        with engine.begin() as c:
            c.execute(text("INSERT INTO annotators (id, pseudonym, created_at) VALUES ('a', 'p', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO sessions (id, annotator_id, token_hash, created_at) "
                           "VALUES ('s', 'a', 't', CURRENT_TIMESTAMP)"))
            c.execute(text("INSERT INTO source_images (id, image_hash, width, height, origin, created_at) "
                           "VALUES ('i', :h, 8, 8, 'upload', CURRENT_TIMESTAMP)"), {"h": "0" * 64})
            for rnd in ("r", "q"):
                c.execute(text("INSERT INTO rounds (id, session_id, source_image_id, round_index, backbone_name, "
                               "params, seeds, code_version, device, dtype, stage_seconds, status, created_at) VALUES "
                               "(:r, 's', 'i', 0, 'nlm', '{}', '[]', 'x', 'cpu', 'float32', '{}', 'chosen', "
                               "CURRENT_TIMESTAMP)"), {"r": rnd})
            for cid, rnd, when in (("c1", "r", "2026-01-01 10:00:00"), ("c2", "r", "2026-01-01 10:05:00"),
                                   ("c3", "r", "2026-01-01 10:09:00"), ("d1", "q", "2026-01-01 11:00:00")):
                c.execute(text("INSERT INTO choices (id, round_id, kind, reason_tags, selector, created_at) "
                               "VALUES (:id, :r, 'skip', '[]', 'human', :t)"), {"id": cid, "r": rnd, "t": when})
        assert upgrade_to_head(engine) == "0006"
        with engine.connect() as c:
            rows = dict(c.execute(text("SELECT id, superseded_at FROM choices")).all())
        stamp = lambda v: None if v is None else str(v)[:19]  # noqa: E731 - SQLite text, PostgreSQL datetime
        assert {k: stamp(v) for k, v in rows.items()} == {
            "c1": "2026-01-01 10:05:00", "c2": "2026-01-01 10:09:00", "c3": None, "d1": None}
        with pytest.raises(IntegrityError), engine.begin() as c:  # a second live choice on round q
            c.execute(text("INSERT INTO choices (id, round_id, kind, reason_tags, selector, created_at) "
                           "VALUES ('d2', 'q', 'skip', '[]', 'human', CURRENT_TIMESTAMP)"))
        with pytest.raises(RuntimeError, match="2 superseded choices"):
            _migrate(engine, "0005", down=True)
        with engine.begin() as c:
            c.execute(text("DELETE FROM choices WHERE superseded_at IS NOT NULL"))
        _migrate(engine, "0005", down=True)
        assert "superseded_at" not in {c["name"] for c in inspect(engine).get_columns("choices")}
    finally:
        engine.dispose()
