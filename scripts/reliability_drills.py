"""Reliability drills with the real app on loopback; prints one JSON report (the figures of docs/RELIABILITY.md).

    python scripts/reliability_drills.py [--clients 32] [--votes 25] [--kills 3] [--no-postgres] [--out FILE]

1. load on SQLite: one app, `--clients` x `--votes` votes (feedback.loadtest), then a generation burst;
2. crash: `--kills` times, SIGKILL the app while 4 clients stream votes, restart it on the same files,
   check the database and that every acknowledged vote is stored once, then resend what got no answer;
3. PostgreSQL: a throwaway server (tests/pg.py), two app replicas sharing it and one image store, the
   same load spread over both replicas.
The app runs with the test settings (tests/app_server.py: TTPO_FAST, tiny engine) since votes, not
generation, are measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, text  # noqa: E402

from feedback.loadtest import (  # noqa: E402
    LoadConfig,
    LoadReport,
    create_session_round,
    database_problems,
    generation_burst,
    persisted_votes,
    resend,
    run_load,
    run_votes,
    verify,
)
from tests.app_server import running_app  # noqa: E402
from tests.pg import PostgresUnavailable, postgres_server  # noqa: E402


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'ttpo.sqlite3'}"


def load_sqlite(root: Path, cfg: LoadConfig, burst: int) -> dict:
    with running_app(root / "load" / "data") as server:
        report = run_load([server.url], sqlite_url(server.data_dir), cfg)
        out = asdict(report) | {"ok": report.ok}
        if burst:
            out["burst"] = generation_burst(server.url, burst)
    return out


def crash_once(data_dir: Path, min_votes: int, log) -> dict:
    """One kill in a stream of votes; returns what was acknowledged, found and recovered."""
    db_url = sqlite_url(data_dir)
    with running_app(data_dir) as server:
        targets = [create_session_round(server.url, seed) for seed in range(2)]
        result: dict = {}
        cfg = LoadConfig(clients=4, votes=5000, sessions=2, retry_fraction=0.05, time_limit_s=120)
        voters = threading.Thread(target=lambda: result.update(votes=run_votes([server.url], targets, cfg)[0]))
        voters.start()
        engine = create_engine(db_url)
        with engine.connect() as conn:
            before = conn.execute(text("SELECT count(*) FROM choices")).scalar()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            time.sleep(0.1)
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM choices")).scalar() - before >= min_votes:
                    break
        engine.dispose()
        server.process.kill()
        server.process.wait(timeout=30)
        voters.join(timeout=120)
    votes = result["votes"]
    acked = [v for v in votes if v.acked]
    unanswered = [v for v in votes if not v.acked]
    with running_app(data_dir) as server:
        problems = database_problems(db_url)
        stored = persisted_votes(db_url, votes)
        acked_once = sum(len(stored.get((v.round_id, v.key), [])) == 1 for v in acked)
        unanswered_stored = sum(len(stored.get((v.round_id, v.key), [])) for v in unanswered)
        counts = resend(unanswered, server.url)
    final = verify(db_url, votes, LoadReport(clients=4, votes_per_client=0, sessions=2, urls=1))
    out = {"acknowledged_before_kill": len(acked), "unanswered_at_kill": len(unanswered),
           "acknowledged_found_once": acked_once, "unanswered_found_stored": unanswered_stored,
           "integrity_problems_after_restart": problems, "resent": counts,
           "after_resend": {"persisted": final.persisted, "lost": final.lost, "duplicated": final.duplicated,
                            "mismatched": final.mismatched}}
    log(f"kill: {json.dumps(out)}")
    return out


def load_postgres(root: Path, cfg: LoadConfig) -> dict:
    try:
        with postgres_server() as url:
            data_dir = root / "replicas" / "data"
            args = ("--db", url)
            with running_app(data_dir, args) as a, running_app(data_dir, args) as b:
                single_targets = [create_session_round(a.url, seed=100 + i) for i in range(cfg.sessions)]
                single = run_load([a.url], url, cfg, targets=single_targets)
                targets = [create_session_round((a, b)[i % 2].url, seed=200 + i) for i in range(cfg.sessions)]
                both = run_load([a.url, b.url], url, cfg, targets=targets)
            return {"one_replica": asdict(single) | {"ok": single.ok},
                    "two_replicas": asdict(both) | {"ok": both.ok}}
    except PostgresUnavailable as exc:
        return {"skipped": str(exc)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--votes", type=int, default=25)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--burst", type=int, default=12)
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--out", type=Path, help="also write the JSON report here")
    a = p.parse_args(argv)
    cfg = LoadConfig(clients=a.clients, votes=a.votes, sessions=a.sessions)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report: dict = {"config": asdict(cfg)}
    with TemporaryDirectory(prefix="ttpo-drills-") as tmp:
        root = Path(tmp)
        log("load on SQLite ...")
        report["sqlite"] = load_sqlite(root, cfg, a.burst)
        log(f"  {report['sqlite']['latency_ms']}")
        kills = []
        for i in range(a.kills):
            log(f"crash drill {i + 1}/{a.kills} ...")
            kills.append(crash_once(root / "crash" / "data", min_votes=40 + 40 * i, log=log))
        report["crash"] = kills
        if not a.no_postgres:
            log("PostgreSQL, one and two replicas ...")
            report["postgres"] = load_postgres(root, cfg)
    ok = (report["sqlite"]["ok"] and report["sqlite"].get("burst", {}).get("dropped_or_other", 0) == 0
          and all(k["acknowledged_found_once"] == k["acknowledged_before_kill"]
                  and not k["integrity_problems_after_restart"] and k["after_resend"]["lost"] == 0
                  and k["after_resend"]["duplicated"] == 0 for k in kills)
          and all(r.get("ok", True) for r in report.get("postgres", {}).values() if isinstance(r, dict)))
    report["ok"] = ok
    text_out = json.dumps(report, indent=2)
    print(text_out)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text_out + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
