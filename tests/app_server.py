"""Start the real app (`python app.py ...`) as a subprocess on a free port for end-to-end tests.

Engine settings are tiny (2 candidates, 2 diffusion steps each way); the backbone is sipl when its
weights are installed, else the weight-free nlm. `running_app(tmp)` yields an `AppServer` once
/api/v1/health reports the engine loaded, and kills the process (by its pid) at the end.
`crash_drill` kills one with SIGKILL in a stream of votes (used by tests/feedback/ops/test_reliability.py and
scripts/reliability_drills.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from feedback.ops.loadtest import (
    LoadConfig,
    LoadReport,
    Vote,
    create_session_round,
    database_problems,
    persisted_votes,
    png_bytes,  # noqa: F401 - re-exported for the tests
    resend,
    run_votes,
    verify,
)

REPO = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token"
BACKBONE = "sipl" if (REPO / "assets" / "sipl.safetensors").is_file() else "nlm"
STARTUP_TIMEOUT_S = 240


@dataclass
class AppServer:
    url: str
    data_dir: Path
    process: subprocess.Popen
    startup_s: float

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ttpo.sqlite3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(data_dir: Path, extra_args: tuple[str, ...] = ()) -> Iterator[AppServer]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TTPO_FAST": "1"}
    env.pop("TTPO_DB_URL", None)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / f"app-{port}.log", "wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--port", str(port), "--data-dir", str(data_dir),
         "--admin-token", ADMIN_TOKEN, "--backbone", BACKBONE, *extra_args],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited with {proc.returncode}: {Path(log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/api/v1/health", timeout=2).json().get("engine_ready"):
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > STARTUP_TIMEOUT_S:
                raise RuntimeError(f"app not ready after {STARTUP_TIMEOUT_S} s: {Path(log.name).read_text()[-3000:]}")
            time.sleep(0.5)
        yield AppServer(url, data_dir, proc, time.perf_counter() - t0)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        log.close()


def create_study(client: Any, definition: dict[str, Any], base_url: str = "", timeout_s: float = 300,
                 admin_token: str = ADMIN_TOKEN) -> dict[str, Any]:
    """POST a study definition with the admin token (202: its images are prepared in the background), then wait
    on its status URL until it is active; returns the create answer updated with the final status.
    `client`: an httpx.Client or a Starlette TestClient."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    r = client.post(f"{base_url}/api/v1/studies", json=definition, headers=admin)
    assert r.status_code == 202, r.text
    body = status = r.json()
    assert body["status"] == "preparing" and body["status_url"] == f"/api/v1/studies/{body['study_id']}/status"
    deadline = time.monotonic() + timeout_s
    while status["status"] == "preparing" and time.monotonic() < deadline:
        status = client.get(f"{base_url}{body['status_url']}?wait_s=10", headers=admin).json()
    assert status["status"] == "active", status
    assert status["progress"] == {"done": body["stimuli"], "total": body["stimuli"]}
    return {**body, **status}


def sqlite_url(data_dir: Path) -> str:
    """The URL of the app's default SQLite database in `data_dir`."""
    return f"sqlite:///{data_dir / 'ttpo.sqlite3'}"


def crash_drill(data_dir: Path, min_votes: int, resend_acknowledged: int = 0) -> dict[str, Any]:
    """SIGKILL the app (SQLite in `data_dir`) while 4 clients stream votes, once at least `min_votes` new votes
    are acknowledged (stored votes, less the one each client may still await the answer to);
    restart it on the same files, check the record, and resend every unanswered vote (plus the first
    `resend_acknowledged` acknowledged ones) with its own key. Returns what was acknowledged, found and recovered.
    """
    db_url = sqlite_url(data_dir)
    with running_app(data_dir) as server:
        targets = [create_session_round(server.url, seed) for seed in range(2)]
        cfg = LoadConfig(clients=4, votes=5000, sessions=2, retry_fraction=0.05, time_limit_s=120)
        result: dict[str, list[Vote]] = {}
        voters = threading.Thread(target=lambda: result.update(votes=run_votes([server.url], targets, cfg)[0]))
        engine = create_engine(db_url)
        try:
            with engine.connect() as conn:
                before = conn.execute(text("SELECT count(*) FROM choices")).scalar()
            voters.start()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 60:  # kill with the clients still sending
                time.sleep(0.1)
                with engine.connect() as conn:  # stored but not yet answered: at most one per client
                    if conn.execute(text("SELECT count(*) FROM choices")).scalar() - before >= min_votes + cfg.clients:
                        break
        finally:
            engine.dispose()
        server.process.kill()  # SIGKILL: no shutdown handler runs
        server.process.wait(timeout=30)
        voters.join(timeout=120)
    votes = result["votes"]
    acked = [v for v in votes if v.acked]
    unanswered = [v for v in votes if not v.acked]
    with running_app(data_dir) as server:  # restart on the same files
        problems = database_problems(db_url)
        found = persisted_votes(db_url, votes)
        stored = [len(found.get((v.round_id, v.key), [])) for v in unanswered]
        acked_once = sum(len(found.get((v.round_id, v.key), [])) == 1 for v in acked)
        counts = resend(unanswered + acked[:resend_acknowledged], server.url)
    final = verify(db_url, votes, LoadReport(clients=4, votes_per_client=0, sessions=2, urls=1))
    return {"acknowledged_before_kill": len(acked), "unanswered_at_kill": len(unanswered),
            "acknowledged_found_once": acked_once, "unanswered_found_stored": sum(stored),
            "unanswered_stored_more_than_once": sum(n > 1 for n in stored),
            "integrity_problems_after_restart": problems, "resent": counts,
            "after_resend": {"votes": len(votes), "persisted": final.persisted, "lost": final.lost,
                             "duplicated": final.duplicated, "mismatched": final.mismatched,
                             "integrity_problems": final.integrity_problems}}
