"""Reliability drills with the real app on loopback; prints one JSON report (the figures of docs/RELIABILITY.md).

    python scripts/reliability_drills.py [--clients 32] [--votes 25] [--kills 3] [--no-postgres] [--out FILE]

1. load on SQLite: one app, `--clients` x `--votes` votes (feedback.ops.loadtest), then a generation burst;
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
from dataclasses import asdict
from pathlib import Path
from tempfile import TemporaryDirectory

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from feedback.ops.loadtest import (
    LoadConfig,
    create_session_round,
    generation_burst,
    run_load,
)
from tests.app_server import crash_drill, running_app, sqlite_url
from tests.pg import PostgresUnavailable, postgres_server


def load_sqlite(root: Path, cfg: LoadConfig, burst: int) -> dict:
    with running_app(root / "load" / "data") as server:
        report = run_load([server.url], sqlite_url(server.data_dir), cfg)
        out = asdict(report) | {"ok": report.ok}
        if burst:
            out["burst"] = generation_burst(server.url, burst)
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
            kills.append(crash_drill(root / "crash" / "data", min_votes=40 + 40 * i))
            log(f"kill: {json.dumps(kills[-1])}")
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
