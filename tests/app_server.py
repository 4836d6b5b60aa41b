"""Start the real app (`python app.py ...`) as a subprocess on a free port for end-to-end tests.

Engine settings are tiny (2 candidates, 2 diffusion steps each way); the backbone is sipl when its
weights are installed, else the weight-free nlm. `running_app(tmp)` yields an `AppServer` once
/api/v1/health reports the engine loaded, and kills the process (by its pid) at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from feedback.loadtest import png_bytes  # noqa: F401 - re-exported for the tests

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
