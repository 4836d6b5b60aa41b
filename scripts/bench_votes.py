"""Votes per second of the app's choice endpoint beside a minimal endpoint, measured in one run.

    python scripts/bench_votes.py [--clients 32] [--votes 25] [--sessions 8] [--rounds 3] [--json]

Starts two servers on loopback, each one uvicorn process on SQLite (WAL, synchronous=NORMAL, as the app):
  app      app.py with tiny engine settings (TTPO_FAST=1) and the weight-free `nlm` backbone; `--sessions`
           sessions with a round each are made through the REST API, then every client votes on
           POST /api/v1/rounds/{id}/choices with its session's token and an Idempotency-Key
           (`feedback.ops.loadtest`, the same clients that check that no vote is lost).
  minimal  FastAPI + SQLAlchemy: a bearer-token check (one select of the session by its token's sha256)
           and one insert of the vote, nothing else.
The same clients (threads with httpx, all released together) vote on both; the servers take turns for
`--rounds` rounds (app, minimal, app, ...) so drift of the machine hits both. Prints votes/s and p95 latency
per server and round, the medians, and their ratio (app / minimal).
"""

import argparse
import hashlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feedback.ops.loadtest import LoadConfig, percentiles, prepare, run_load  # noqa: E402

ADMIN = "bench-admin-token-" + "x" * 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200 and r.json().get("engine_ready", True):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server at {url} not ready after {timeout_s} s: {log.read_text()[-2000:]}")


# ---------------------------------------------------------------------------------------------- minimal server
def serve_minimal(port: int, db_path: str) -> None:
    """The reference: a token check and one insert per vote."""
    import uvicorn
    from fastapi import Depends, FastAPI, Header, HTTPException
    from pydantic import BaseModel
    from sqlalchemy import Column, Integer, String, Text, create_engine, event, select
    from sqlalchemy.orm import Session, declarative_base, sessionmaker

    Base = declarative_base()

    class Sess(Base):
        __tablename__ = "sessions"
        id = Column(String(32), primary_key=True)
        token_hash = Column(String(64), unique=True, index=True, nullable=False)

    class Vote(Base):
        __tablename__ = "votes"
        id = Column(Integer, primary_key=True)
        session_id = Column(String(32), nullable=False)
        round_id = Column(String(64), nullable=False)
        body = Column(Text, nullable=False)

    engine = create_engine(f"sqlite:///{db_path}", connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(conn, _record):
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine)
    app = FastAPI()

    class VoteIn(BaseModel):
        preferred: list[str]
        rejected: list[str]
        decision_ms: int | None = None

    def who(authorization: str = Header()) -> str:
        token = authorization.removeprefix("Bearer ")
        with Session(engine) as s:
            sid = s.scalar(select(Sess.id).where(Sess.token_hash == hashlib.sha256(token.encode()).hexdigest()))
        if sid is None:
            raise HTTPException(401, "unknown token")
        return sid

    @app.post("/sessions")
    def new_session() -> dict:
        token = secrets.token_urlsafe(32)
        with sessions.begin() as s:
            sid = uuid.uuid4().hex
            s.add(Sess(id=sid, token_hash=hashlib.sha256(token.encode()).hexdigest()))
        return {"session_id": sid, "token": token}

    @app.post("/rounds/{round_id}/choices")
    def vote(round_id: str, body: VoteIn, sid: str = Depends(who)) -> dict:
        with sessions.begin() as s:
            row = Vote(session_id=sid, round_id=round_id, body=body.model_dump_json())
            s.add(row)
            s.flush()
            return {"choice_id": str(row.id)}

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def minimal_round(url: str, tokens: list[str], clients: int, votes: int) -> dict:
    """`clients` threads released together, each sending `votes` votes with its session's token."""
    start = threading.Barrier(clients + 1)
    latencies: list[float] = []
    lock = threading.Lock()
    failures = [0]

    def client(i: int) -> None:
        token = tokens[i % len(tokens)]
        with httpx.Client(timeout=60) as c:
            start.wait()
            for v in range(votes):
                t0 = time.perf_counter()
                r = c.post(f"{url}/rounds/r{i % len(tokens)}/choices", headers={"Authorization": f"Bearer {token}"},
                           json={"preferred": ["a"], "rejected": ["b", "c"], "decision_ms": 500})
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    if r.status_code == 200:
                        latencies.append(ms)
                    else:
                        failures[0] += 1

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        start.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - t0
    return {"votes_per_s": round(len(latencies) / wall, 1), "latency_ms": percentiles(latencies),
            "acknowledged": len(latencies), "failed": failures[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--votes", type=int, default=25, help="votes per client per round")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve-minimal", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_minimal:
        serve_minimal(int(a.serve_minimal[0]), a.serve_minimal[1])
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-votes-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TTPO_FAST": "1"}
    env.pop("TTPO_DB_URL", None)
    app_port, min_port = free_port(), free_port()
    app_log, min_log = tmp / "app.log", tmp / "minimal.log"
    app = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(app_port), "--data-dir",
                            str(tmp / "data"), "--admin-token", ADMIN, "--backbone", "nlm", "--rate-limit", "0"],
                           cwd=REPO, env=env, stdout=open(app_log, "wb"), stderr=subprocess.STDOUT)
    minimal = subprocess.Popen([sys.executable, __file__, "--serve-minimal", str(min_port), str(tmp / "min.sqlite3")],
                               cwd=REPO, env=env, stdout=open(min_log, "wb"), stderr=subprocess.STDOUT)
    try:
        app_url, min_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{min_port}"
        wait_ready(f"{app_url}/api/v1/health", app, app_log)
        wait_ready(f"{min_url}/health", minimal, min_log)
        cfg = LoadConfig(clients=a.clients, votes=a.votes, sessions=a.sessions, retry_fraction=0.0)
        targets = prepare(app_url, cfg)
        tokens = [httpx.post(f"{min_url}/sessions").json()["token"] for _ in range(a.sessions)]
        db_url = f"sqlite:///{tmp / 'data' / 'ttpo.sqlite3'}"
        rows: dict[str, list[dict]] = {"app": [], "minimal": []}
        for _ in range(a.rounds):
            report = run_load([app_url], db_url, cfg, targets=targets)
            if not report.ok:
                raise RuntimeError(f"the app lost or mangled votes: {report}")
            rows["app"].append({"votes_per_s": report.votes_per_s, "latency_ms": report.latency_ms,
                                "acknowledged": report.acknowledged, "failed": report.failed})
            rows["minimal"].append(minimal_round(min_url, tokens, a.clients, a.votes))
        if any(not r["latency_ms"] for v in rows.values() for r in v):
            raise RuntimeError(f"a server acknowledged no vote: {rows}")
        med = {k: statistics.median(r["votes_per_s"] for r in v) for k, v in rows.items()}
        p95 = {k: statistics.median(r["latency_ms"]["p95"] for r in v) for k, v in rows.items()}
        out = {"clients": a.clients, "votes_per_client": a.votes, "sessions": a.sessions, "rounds": rows,
               "median_votes_per_s": med, "median_p95_ms": p95,
               "ratio_app_to_minimal": round(med["app"] / med["minimal"], 3), "cpus": os.cpu_count()}
        if a.json:
            print(json.dumps(out, indent=1))
        else:
            for k in rows:
                print(f"{k:8s} votes/s " + " ".join(f"{r['votes_per_s']:6.1f}" for r in rows[k])
                      + f"   p95 ms " + " ".join(f"{r['latency_ms']['p95']:6.0f}" for r in rows[k]))
            print(f"median: app {med['app']:.1f} votes/s (p95 {p95['app']:.0f} ms), minimal {med['minimal']:.1f} "
                  f"(p95 {p95['minimal']:.0f} ms); ratio {out['ratio_app_to_minimal']:.2f}")
        return 0
    finally:
        for p in (app, minimal):
            p.kill()
            p.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
