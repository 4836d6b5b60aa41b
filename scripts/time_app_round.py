"""Time one full human round through a running app's REST API: restore + candidates, a choice, refine.

    python app.py --port 7860 &      # default settings (8 candidates)
    python scripts/time_app_round.py --url http://127.0.0.1:7860 --size 256 [--image assets/samples/X.png]

Prints JSON: seconds for the round creation (restore + candidates), the choice and the refinement
(which also generates the next round's candidates, as the app does), and the total.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def square_png(path: Path, size: int) -> bytes:
    """The image resized so its short side is `size`, centre-cropped to size x size, as PNG bytes."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = size / min(img.size)
        img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        buf = io.BytesIO()
        img.crop((left, top, left + size, top + size)).save(buf, format="PNG")
        return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:7860")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--image", type=Path, default=sorted((REPO / "assets" / "samples").glob("*.png"))[0])
    p.add_argument("--degradation", default="noise:25")
    a = p.parse_args(argv)
    api = a.url.rstrip("/") + "/api/v1"
    with httpx.Client(timeout=600) as client:
        session = client.post(f"{api}/sessions", json={"annotator": "timer"}).json()
        auth = {"Authorization": f"Bearer {session['token']}"}
        t0 = time.perf_counter()
        r = client.post(f"{api}/sessions/{session['session_id']}/rounds", headers=auth,
                        files={"image": ("x.png", square_png(a.image, a.size), "image/png")},
                        data={"degradation": a.degradation, "seed": "0"})
        r.raise_for_status()
        rnd = r.json()
        t1 = time.perf_counter()
        ids = [c["id"] for c in rnd["candidates"]]
        r = client.post(f"{api}/rounds/{rnd['round_id']}/choices", headers=auth,
                        json={"preferred": ids[:2], "rejected": ids[2:4]})
        r.raise_for_status()
        t2 = time.perf_counter()
        r = client.post(f"{api}/rounds/{rnd['round_id']}/refine", headers=auth, json={})
        r.raise_for_status()
        t3 = time.perf_counter()
    out = {"size": a.size, "candidates": len(ids), "seconds": {
        "restore_and_candidates": round(t1 - t0, 2), "choice": round(t2 - t1, 3),
        "refine_and_next_candidates": round(t3 - t2, 2), "total": round(t3 - t0, 2)}}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
