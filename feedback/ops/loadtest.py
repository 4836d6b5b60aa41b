"""Bounded load test of the REST API on loopback: many clients voting at once, every vote checked in the database.

    python -m feedback.ops.loadtest --url http://127.0.0.1:7860 [--url http://127.0.0.1:7861 ...] \
        --db sqlite:///data/ttpo.sqlite3 --clients 32 --votes 25 --sessions 8 --json

Set-up: `--sessions` sessions are created, each with one round (an upload through the engine) on the
first URL. Then `--clients` HTTP clients start together; client c votes `--votes` times in session
c mod sessions (several clients share a session, like the tabs of one participant), spreading its requests
over every `--url` (replicas). Each vote carries its own Idempotency-Key; a fraction of votes is sent twice
(a client retrying after a lost answer) and must come back as the same choice with created=false.

Verification reads the database: every acknowledged vote is stored exactly once (by its key and round),
with the candidates it named, and `feedback.ops.integrity.integrity_check` finds no problem.
`generation_burst` sends more concurrent round creations than the engine admits: each answer must be
200 or a 429/503 carrying Retry-After; none may be dropped.

The report (JSON) gives clients x votes, acknowledged / persisted / duplicated / lost counts, latency
percentiles (ms) and throughput. Exit status 1 when any vote is lost or duplicated, or any check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sqlalchemy import select

from feedback.ops.integrity import database_check
from feedback.record.db import open_database
from feedback.record.models import Choice, ChoiceCandidate

API = "/api/v1"


@dataclass(frozen=True)
class LoadConfig:
    """clients x votes each, over `sessions` sessions; `retry_fraction` of votes re-sent with the same key."""

    clients: int = 32
    votes: int = 25
    sessions: int = 8
    retry_fraction: float = 0.1
    image_size: int = 32
    request_timeout_s: float = 60.0
    time_limit_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.clients <= 1024 and 1 <= self.votes <= 10_000 and 1 <= self.sessions <= self.clients):
            raise ValueError("need 1 <= clients <= 1024, 1 <= votes <= 10000, 1 <= sessions <= clients")
        if not 0.0 <= self.retry_fraction <= 1.0:
            raise ValueError("retry_fraction must be in [0, 1]")


@dataclass(frozen=True)
class SessionRound:
    """A session (id, token) and one of its rounds with the ids of its candidates."""

    session_id: str
    token: str
    round_id: str
    candidates: tuple[str, ...]


@dataclass
class Vote:
    """One vote as the client sent it; `acked` once an HTTP 200 came back (then `choice_id` is known)."""

    key: str
    round_id: str
    token: str
    preferred: list[str]
    rejected: list[str]
    url: str
    acked: bool = False
    choice_id: str | None = None
    latency_ms: float | None = None
    retried: bool = False
    retry_consistent: bool | None = None
    error: str | None = None


@dataclass
class LoadReport:
    clients: int
    votes_per_client: int
    sessions: int
    urls: int
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    retries: int = 0
    retries_consistent: int = 0
    persisted: int = 0
    duplicated: int = 0
    lost: int = 0
    mismatched: int = 0
    integrity_problems: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    votes_per_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.acknowledged == self.sent and self.persisted == self.acknowledged and self.duplicated == 0
                and self.lost == 0 and self.mismatched == 0 and self.retries_consistent == self.retries
                and not self.integrity_problems)


def png_bytes(size: int = 48, seed: int = 0) -> bytes:
    """A smooth seeded test image (gradients and a little noise) as PNG bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 0.5 * (x + y)], axis=-1) + 0.05 * rng.standard_normal((size, size, 3))
    buf = io.BytesIO()
    Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max of `values` (ms), rounded; empty dict when there are none."""
    if not values:
        return {}
    arr = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(arr, 50)), 2), "p95": round(float(np.percentile(arr, 95)), 2),
            "p99": round(float(np.percentile(arr, 99)), 2), "max": round(float(arr.max()), 2)}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _post_with_retry_after(client: httpx.Client, url: str, deadline: float, **kwargs: Any) -> httpx.Response:
    """POST, waiting as told by Retry-After on 429/503 until `deadline` (time.monotonic())."""
    while True:
        response = client.post(url, **kwargs)
        if response.status_code not in (429, 503) or time.monotonic() > deadline:
            return response
        time.sleep(min(float(response.headers.get("Retry-After", "1")), max(0.0, deadline - time.monotonic())))


def create_session_round(base_url: str, seed: int, image_size: int = 32, timeout_s: float = 300.0,
                         degradation: str = "noise:15") -> SessionRound:
    """A new session with one round (restored + candidates) created through the API."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        response = client.post(f"{API}/sessions", json={"annotator": f"load-{seed}"})
        response.raise_for_status()
        session = response.json()
        response = _post_with_retry_after(
            client, f"{API}/sessions/{session['session_id']}/rounds", deadline, headers=_auth(session["token"]),
            files={"image": ("load.png", png_bytes(image_size, seed), "image/png")},
            data={"degradation": degradation, "seed": str(seed)})
        if response.status_code != 200:
            raise RuntimeError(f"round creation failed: {response.status_code} {response.text[:300]}")
        rnd = response.json()
    return SessionRound(session["session_id"], session["token"], rnd["round_id"],
                        tuple(c["id"] for c in rnd["candidates"]))


def prepare(base_url: str, cfg: LoadConfig) -> list[SessionRound]:
    """`cfg.sessions` sessions with a round each (sequential: the engine runs one computation at a time)."""
    return [create_session_round(base_url, cfg.seed + i, cfg.image_size) for i in range(cfg.sessions)]


def _random_vote(rng: random.Random, target: SessionRound, url: str, client_index: int, i: int) -> Vote:
    ids = list(target.candidates)
    rng.shuffle(ids)
    n_rejected = rng.randint(1, max(1, len(ids) - 1))
    return Vote(key=f"c{client_index}-v{i}-{uuid.uuid4().hex[:12]}", round_id=target.round_id,
                token=target.token, preferred=ids[:1], rejected=ids[1:1 + n_rejected], url=url)


def _send(client: httpx.Client, vote: Vote) -> httpx.Response:
    return client.post(f"{vote.url}{API}/rounds/{vote.round_id}/choices",
                       json={"preferred": vote.preferred, "rejected": vote.rejected, "decision_ms": 500},
                       headers=_auth(vote.token) | {"Idempotency-Key": vote.key})


def _client_run(index: int, urls: Sequence[str], targets: Sequence[SessionRound], cfg: LoadConfig,
                start: threading.Barrier, deadline: float) -> list[Vote]:
    rng = random.Random(cfg.seed * 100_003 + index)
    target = targets[index % len(targets)]
    votes = []
    with httpx.Client(timeout=cfg.request_timeout_s) as client:
        start.wait()
        for i in range(cfg.votes):
            if time.monotonic() > deadline:
                break
            vote = _random_vote(rng, target, urls[(index + i) % len(urls)], index, i)
            votes.append(vote)
            t0 = time.perf_counter()
            try:
                response = _send(client, vote)
            except httpx.TransportError as exc:  # no answer: the vote may or may not be stored
                vote.error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, httpx.ConnectError):
                    break  # the server is gone (killed): this client stops
                continue
            vote.latency_ms = (time.perf_counter() - t0) * 1000
            if response.status_code != 200:
                vote.error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            vote.acked, vote.choice_id = True, response.json()["choice_id"]
            if rng.random() < cfg.retry_fraction:  # the answer was "lost": the client sends it again
                vote.retried = True
                vote.url = urls[(index + i + 1) % len(urls)]
                try:
                    again = _send(client, vote)
                    body = again.json() if again.status_code == 200 else {}
                    vote.retry_consistent = body.get("choice_id") == vote.choice_id and body.get("created") is False
                except httpx.HTTPError:
                    vote.retry_consistent = False
    return votes


def run_votes(urls: Sequence[str], targets: Sequence[SessionRound], cfg: LoadConfig) -> tuple[list[Vote], float]:
    """All clients vote at once (a barrier releases them together); returns every vote and the wall time."""
    start = threading.Barrier(cfg.clients + 1)
    deadline = time.monotonic() + cfg.time_limit_s
    with ThreadPoolExecutor(max_workers=cfg.clients, thread_name_prefix="voter") as pool:
        futures = [pool.submit(_client_run, c, list(urls), targets, cfg, start, deadline) for c in range(cfg.clients)]
        start.wait()
        t0 = time.perf_counter()
        votes = [v for f in futures for v in f.result()]
    return votes, time.perf_counter() - t0


def persisted_votes(db_url: str, votes: Sequence[Vote]) -> dict[tuple[str, str], list[tuple[str, set, set]]]:
    """(round_id, key) -> stored choices [(choice_id, preferred ids, rejected ids)] for the votes' keys."""
    db = open_database(db_url, migrate=False)
    rounds = sorted({v.round_id for v in votes})
    found: dict[tuple[str, str], list[tuple[str, set, set]]] = {}
    try:
        with db.sessions.begin() as s:
            rows = s.execute(select(Choice.id, Choice.round_id, Choice.idempotency_key)
                             .where(Choice.round_id.in_(rounds), Choice.idempotency_key.is_not(None))).all()
            members: dict[str, tuple[set, set]] = {}
            for cid, candidate, role in s.execute(select(ChoiceCandidate.choice_id, ChoiceCandidate.candidate_id,
                                                         ChoiceCandidate.role)
                                                  .where(ChoiceCandidate.choice_id.in_([r[0] for r in rows]))):
                members.setdefault(cid, (set(), set()))[0 if role == "preferred" else 1].add(candidate)
            for cid, rid, key in rows:
                pref, rej = members.get(cid, (set(), set()))
                found.setdefault((rid, key), []).append((cid, pref, rej))
    finally:
        db.engine.dispose()
    return found


def database_problems(db_url: str) -> list[str]:
    """`integrity_check` of the whole record, plus SQLite's own page check when the database is SQLite."""
    db = open_database(db_url, migrate=False)
    try:
        return database_check(db)
    finally:
        db.engine.dispose()


def verify(db_url: str, votes: Sequence[Vote], report: LoadReport) -> LoadReport:
    """Fill the persisted / duplicated / lost / mismatched counts and the integrity problems of `report`."""
    found = persisted_votes(db_url, votes)
    for vote in votes:
        stored = found.get((vote.round_id, vote.key), [])
        if not vote.acked:
            report.duplicated += max(0, len(stored) - 1)  # an unacknowledged vote may be stored, but once
            continue
        if not stored:
            report.lost += 1
            continue
        report.persisted += 1
        report.duplicated += len(stored) - 1
        cid, pref, rej = stored[0]
        if cid != vote.choice_id or pref != set(vote.preferred) or rej != set(vote.rejected):
            report.mismatched += 1
    report.integrity_problems = database_problems(db_url)
    return report


def resend(votes: Sequence[Vote], url: str, timeout_s: float = 60.0) -> dict[str, int]:
    """Send `votes` again with their own keys (a client retrying after it got no answer) to `url`.

    Counts the answers: `created` (the first attempt never reached the database), `already` (it did),
    `failed` (any other answer). Acknowledged votes must come back `already` with their choice id.
    """
    counts = Counter(created=0, already=0, failed=0, inconsistent=0)
    with httpx.Client(timeout=timeout_s) as client:
        for vote in votes:
            vote.url = url
            response = _send(client, vote)
            if response.status_code != 200:
                counts["failed"] += 1
                continue
            body = response.json()
            counts["created" if body["created"] else "already"] += 1
            if vote.acked and (body["created"] or body["choice_id"] != vote.choice_id):
                counts["inconsistent"] += 1
            vote.acked, vote.choice_id = True, body["choice_id"]
    return dict(counts)


def run_load(urls: Sequence[str], db_url: str, cfg: LoadConfig,
             targets: Sequence[SessionRound] | None = None) -> LoadReport:
    """Prepare (unless `targets` are given), vote from every client at once, verify in the database."""
    targets = list(targets) if targets is not None else prepare(urls[0], cfg)
    votes, wall = run_votes(urls, targets, cfg)
    acked = [v for v in votes if v.acked]
    report = LoadReport(clients=cfg.clients, votes_per_client=cfg.votes, sessions=len(targets), urls=len(urls),
                        sent=len(votes), acknowledged=len(acked), failed=len(votes) - len(acked),
                        retries=sum(v.retried for v in votes),
                        retries_consistent=sum(bool(v.retry_consistent) for v in votes),
                        latency_ms=percentiles([v.latency_ms for v in acked if v.latency_ms is not None]),
                        wall_s=round(wall, 3), votes_per_s=round(len(acked) / wall, 1) if wall > 0 else 0.0,
                        errors=[e for e, _ in Counter(v.error for v in votes if v.error).most_common(5)])
    return verify(db_url, votes, report)


def generation_burst(base_url: str, n: int, image_size: int = 32, timeout_s: float = 300.0) -> dict[str, Any]:
    """`n` concurrent round creations (each in its own session): count the answers by status.

    Every request must be answered: 200 (a round was made) or 429/503 with a Retry-After header.
    """
    sessions = []
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        for i in range(n):
            response = client.post(f"{API}/sessions", json={"annotator": f"burst-{i}"})
            response.raise_for_status()
            sessions.append(response.json())

    def one(i: int) -> tuple[int, str | None]:
        with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
            try:
                response = client.post(f"{API}/sessions/{sessions[i]['session_id']}/rounds",
                                       headers=_auth(sessions[i]["token"]),
                                       files={"image": ("b.png", png_bytes(image_size, 1000 + i), "image/png")},
                                       data={"degradation": "noise:15", "seed": str(i)})
            except httpx.HTTPError as exc:
                return -1, type(exc).__name__
            return response.status_code, response.headers.get("Retry-After")

    with ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(one, range(n)))
    statuses = Counter(status for status, _ in answers)
    refused = [(s, hint) for s, hint in answers if s in (429, 503)]
    return {"requests": n, "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "refused_with_retry_after": sum(1 for _, hint in refused if hint and hint.isdigit()),
            "refused": len(refused), "dropped_or_other": sum(v for k, v in statuses.items() if k not in (200, 429, 503))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m feedback.ops.loadtest", description=__doc__.splitlines()[0])
    p.add_argument("--url", action="append", required=True, help="base URL of an app replica (repeatable)")
    p.add_argument("--db", required=True, help="the database URL the replicas write to (for verification)")
    for name, f in LoadConfig.__dataclass_fields__.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--burst", type=int, default=0, help="also send this many concurrent round creations")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    try:
        cfg = LoadConfig(**{k: getattr(a, k) for k in LoadConfig.__dataclass_fields__})
    except ValueError as exc:
        p.error(str(exc))
    report = run_load(a.url, a.db, cfg)
    out: dict[str, Any] = asdict(report) | {"ok": report.ok}
    if a.burst:
        out["burst"] = generation_burst(a.url[0], a.burst, cfg.image_size)
    print(json.dumps(out, indent=None if a.json else 2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
