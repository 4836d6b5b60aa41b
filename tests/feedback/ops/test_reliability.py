"""Faults and load against the real app (subprocesses on loopback): SIGKILL in a stream of votes, 32 clients
x 25 votes on SQLite, and two replicas on one PostgreSQL database sharing one image store.

The figures in docs/RELIABILITY.md come from `python scripts/reliability_drills.py`, which runs the same
functions (feedback.ops.loadtest) with more kills and prints JSON.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import create_engine, text

from feedback.ops.loadtest import (
    LoadConfig,
    create_session_round,
    generation_burst,
    run_load,
)

try:
    from tests.app_server import (
        ADMIN_TOKEN,
        crash_drill,
        create_study,
        png_bytes,
        running_app,
        sqlite_url,
    )
    from tests.pg import postgres_url
except ImportError:  # pytest run from inside tests/
    from app_server import (
        ADMIN_TOKEN,
        crash_drill,
        create_study,
        png_bytes,
        running_app,
        sqlite_url,
    )
    from pg import postgres_url  # noqa: F401

API = "/api/v1"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LOAD = LoadConfig(clients=32, votes=25, sessions=8, time_limit_s=300)

#: fault and load drills: `-m 'not slow'` leaves them out of a quick local run; CI runs them
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("load") / "data") as srv:
        yield srv


@pytest.mark.timeout(900)
def test_32_clients_x_25_votes_on_sqlite_every_vote_once(sqlite_server):
    report = run_load([sqlite_server.url], sqlite_url(sqlite_server.data_dir), LOAD)
    print(f"\nSQLite load: {report.acknowledged} votes, latency ms {report.latency_ms}, {report.votes_per_s} votes/s")
    assert report.sent == LOAD.clients * LOAD.votes
    assert report.acknowledged == report.sent, report.errors
    assert report.persisted == report.sent and report.duplicated == 0 and report.lost == 0
    assert report.mismatched == 0 and report.retries > 0 and report.retries_consistent == report.retries
    assert report.integrity_problems == []
    assert set(report.latency_ms) == {"p50", "p95", "p99", "max"}
    assert report.ok


@pytest.mark.timeout(900)
def test_generation_beyond_capacity_is_refused_with_a_retry_hint_never_dropped(sqlite_server):
    burst = generation_burst(sqlite_server.url, 12)
    assert burst["dropped_or_other"] == 0, burst
    assert burst["refused"] >= 1, f"12 concurrent generations should overflow a queue of 4: {burst}"
    assert burst["refused_with_retry_after"] == burst["refused"], burst
    assert httpx.get(f"{sqlite_server.url}{API}/health").json()["status"] == "ok"


@pytest.mark.timeout(900)
def test_sigkill_in_a_stream_of_votes_loses_no_acknowledged_vote(tmp_path):
    out = crash_drill(tmp_path / "data", min_votes=60, resend_acknowledged=10)
    assert out["acknowledged_before_kill"] >= 60 and out["unanswered_at_kill"] > 0, \
        "the kill must land in the middle of the stream"
    assert out["integrity_problems_after_restart"] == []
    assert out["acknowledged_found_once"] == out["acknowledged_before_kill"], "an acknowledged vote is missing"
    assert out["unanswered_stored_more_than_once"] == 0
    # Clients retry what got no answer (and some acknowledged ones): each vote ends up stored exactly once.
    assert out["resent"]["failed"] == 0 and out["resent"]["inconsistent"] == 0, out["resent"]
    assert out["resent"]["already"] >= 10
    final = out["after_resend"]
    assert final["lost"] == 0 and final["duplicated"] == 0 and final["mismatched"] == 0
    assert final["persisted"] == final["votes"] and final["integrity_problems"] == []


# ------------------------------------------------------------------------------ replicas on PostgreSQL
@pytest.fixture(scope="module")
def replica_db(postgres_url):
    """A database of its own on the shared test server."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS replicas"))
        conn.execute(text("CREATE DATABASE replicas"))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/replicas"


@pytest.fixture(scope="module")
def replicas(replica_db, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("replicas") / "data"  # one image store for both
    args = ("--db", replica_db)
    with running_app(data_dir, args) as a, running_app(data_dir, args) as b:
        yield a, b


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_two_replicas_on_one_postgres_every_vote_once(replicas, replica_db):
    a, b = replicas
    targets = [create_session_round((a, b)[i % 2].url, seed=20 + i) for i in range(LOAD.sessions)]
    report = run_load([a.url, b.url], replica_db, LOAD, targets=targets)
    print(f"\nPostgreSQL, 2 replicas: {report.acknowledged} votes, latency ms {report.latency_ms}, "
          f"{report.votes_per_s} votes/s")
    assert report.acknowledged == report.sent == LOAD.clients * LOAD.votes, report.errors
    assert report.ok, report
    # A round made on one replica is served with its images by the other (shared database and store).
    with httpx.Client(timeout=60) as client:
        token = {"Authorization": f"Bearer {targets[0].token}"}
        rnd = client.get(f"{b.url}{API}/rounds/{targets[0].round_id}", headers=token).json()
        assert client.get(b.url + rnd["candidates"][0]["url"], headers=token).status_code == 200


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_study_assignment_stays_consistent_across_replicas(replicas, replica_db, tmp_path):
    a, b = replicas
    paths = []
    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(png_bytes(32, seed=40 + i))
        paths.append(str(tmp_path / f"img{i}.png"))
    definition = {"name": "replicas", "images": paths, "conditions": ["bicubic", "nlm", "median"],
                  "degradations": ["noise:20"], "items_per_participant": 6, "repeat_share": 0.0,
                  "attention_checks": 0, "consent_text": "ok", "consent_version": "v1", "seed": 3}
    with httpx.Client(timeout=600) as client:
        study_id = create_study(client, definition, base_url=a.url)["study_id"]

        def enrol(i: int) -> dict:
            r = httpx.post(f"{(a, b)[i % 2].url}{API}/studies/{study_id}/participants",
                           json={"consent_version": "v1", "platform_id": f"p{i}"}, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(max_workers=12) as pool:
            enrolled = list(pool.map(enrol, range(12)))
        assert len({e["participant_id"] for e in enrolled}) == 12
        # Every participant sees the same next item through either replica, and votes through both land once.
        for e in enrolled[:4]:
            auth = {"Authorization": f"Bearer {e['token']}"}
            route = f"{API}/studies/{study_id}/participants/{e['participant_id']}"
            first_a = client.get(a.url + route + "/next", headers=auth).json()
            first_b = client.get(b.url + route + "/next", headers=auth).json()
            assert first_a == first_b
            k = first_a["k"]
            votes = [client.post(u + route + f"/items/{k}/vote", headers=auth, json={"choice": "left"})
                     for u in (a.url, b.url)]
            assert [v.status_code for v in votes] == [200, 200], [v.text for v in votes]
            assert [v.json()["created"] for v in votes] == [True, False]
            assert client.get(b.url + route + "/next", headers=auth).json()["k"] != k
    # Participant indices (the Latin-square rows) are distinct: no two enrolments took the same slot.
    with create_engine(replica_db).connect() as conn:
        rows = conn.execute(text("SELECT participant_index FROM participants WHERE study_id = :s"),
                            {"s": study_id}).scalars().all()
    assert sorted(rows) == list(range(12))


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_adaptive_assignment_stays_consistent_across_replicas(replicas, replica_db, tmp_path):
    """sampling 'adaptive' on two replicas: participants enrol and answer at the same time through both; each item
    is chosen under the study row's lock, so every participant gets one item per position, the same item from
    either replica, and the choices (recorded with the votes they saw) follow one order."""
    a, b = replicas
    paths = []
    for i in range(2):
        (tmp_path / f"ad{i}.png").write_bytes(png_bytes(32, seed=70 + i))
        paths.append(str(tmp_path / f"ad{i}.png"))
    definition = {"name": "adaptive replicas", "images": paths, "conditions": ["bicubic", "nlm", "median"],
                  "degradations": ["noise:20"], "items_per_participant": 5, "repeat_share": 0.2,
                  "attention_checks": 0, "consent_text": "ok", "consent_version": "v1", "seed": 4,
                  "sampling": "adaptive"}
    with httpx.Client(timeout=600) as client:
        study_id = create_study(client, definition, base_url=a.url)["study_id"]

    def participant(i: int) -> int:
        with httpx.Client(timeout=120) as c:
            r = c.post(f"{(a, b)[i % 2].url}{API}/studies/{study_id}/participants",
                       json={"consent_version": "v1", "platform_id": f"ad{i}"})
            assert r.status_code == 200, r.text
            e = r.json()
            auth = {"Authorization": f"Bearer {e['token']}"}
            route = f"{API}/studies/{study_id}/participants/{e['participant_id']}"
            for step in range(20):
                nexts = [c.get(s.url + route + "/next", headers=auth).json() for s in ((a, b) if step % 2 else (b, a))]
                assert nexts[0] == nexts[1], nexts  # the same item through either replica
                if nexts[0]["done"]:
                    return step  # items answered
                choice = "left" if (i + step) % 3 else "right"
                v = c.post((a, b)[(i + step) % 2].url + route + f"/items/{nexts[0]['k']}/vote", headers=auth,
                           json={"choice": choice})
                assert v.status_code == 200, v.text
            raise AssertionError("a participant never finished")

    with ThreadPoolExecutor(max_workers=8) as pool:
        answered = list(pool.map(participant, range(8)))
    assert answered == [6] * 8
    with create_engine(replica_db).connect() as conn:
        rows = conn.execute(text(
            "SELECT i.participant_id, i.position, i.sampler, i.sampler_votes, i.is_repeat, i.answer "
            "FROM study_items i JOIN participants p ON i.participant_id = p.id JOIN rounds r ON i.round_id = r.id "
            "WHERE p.study_id = :s ORDER BY r.created_at, r.id"), {"s": study_id}).all()
    by_person: dict[str, list[int]] = {}
    for pid, position, *_rest in rows:
        by_person.setdefault(pid, []).append(position)
    assert len(by_person) == 8 and all(sorted(p) == list(range(6)) for p in by_person.values())
    assert {r.sampler for r in rows} == {"adaptive"} and all(r.answer is not None for r in rows)
    seen = [r.sampler_votes for r in rows if not r.is_repeat]
    assert seen == sorted(seen) and seen[-1] > 0  # one order of choices, each seeing at least the earlier votes
