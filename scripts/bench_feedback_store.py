"""Latency of recording a choice (one transaction per user event, commit included); prints p50/p95/max.

    .venv/bin/python scripts/bench_feedback_store.py            # SQLite file in a temp dir
    .venv/bin/python scripts/bench_feedback_store.py --db postgresql://user@host/db --n 200
Target: p95 <= 50 ms on SQLite.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import uuid

import numpy as np

from feedback.record import choices, store
from feedback.record.choices import ChoiceInput, ChoiceKind
from feedback.record.db import open_database
from feedback.record.store import CandidateSpec


def fake_hash(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--n", type=int, default=200, help="number of choices to record")
    parser.add_argument("--candidates", type=int, default=4, help="candidates per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(args.db, data_dir=tmp)
        with db.sessions.begin() as s:
            session_id = store.create_annotator_session(s, fake_hash("bench"), fake_hash(uuid.uuid4().hex)).id
            source = store.add_source_image(s, image_hash=fake_hash("src"), width=256, height=256, origin="sample")
        rounds = []
        for i in range(args.n):
            with db.sessions.begin() as s:
                rnd = store.create_round(s, store.RoundRecord(
                    session_id=session_id, source_image_id=source.id, backbone_name="bench", code_version="bench",
                    device="cpu", dtype="float32", seeds=(i,)))
                cands = store.add_candidates(s, rnd.id, [CandidateSpec(fake_hash(f"{i}-{k}"), "sdedit", seed=k)
                                                         for k in range(args.candidates)])
                rounds.append((rnd.id, [c.id for c in cands]))
        seconds = []
        for round_id, cands in rounds:
            start = time.perf_counter()
            with db.sessions.begin() as s:
                choices.record_choice(s, round_id, ChoiceInput(ChoiceKind.PAIRWISE, cands[:1], cands[1:],
                                                               tags=["artefacts"], decision_ms=1500,
                                                               idempotency_key=uuid.uuid4().hex))
            seconds.append(time.perf_counter() - start)
        ms = np.array(seconds) * 1000
        backend = db.engine.dialect.name
        db.engine.dispose()
    print(f"record_choice on {backend}, {args.n} choices x {args.candidates} candidates: "
          f"p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms")


if __name__ == "__main__":
    main()
