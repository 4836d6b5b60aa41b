"""Run the bad-input corpus (tests/bad_inputs.py) through decode_image_bytes and print a JSON summary.

    python scripts/bad_input_report.py [--max-side 1024] [--max-pixels 1048576] [--details]

Counts cases by kind and outcome, times the slowest refusal, and lists every case whose outcome (or
decoded shape / probe pixels) differs from what the corpus expects; exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feedback.loop.uploads import UploadLimits, decode_image_bytes
from tests.bad_inputs import corpus, outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = UploadLimits()
    p.add_argument("--max-side", type=int, default=defaults.max_side)
    p.add_argument("--max-pixels", type=int, default=defaults.max_pixels)
    p.add_argument("--details", action="store_true", help="list every case with its outcome and message")
    a = p.parse_args(argv)
    limits = UploadLimits(max_side=a.max_side, max_pixels=a.max_pixels)
    by_kind: dict[str, Counter] = {}
    unexpected, details, slowest = [], [], (0.0, "")
    for case in corpus(limits):
        t0 = time.perf_counter()
        got, detail = outcome(case, lambda data: decode_image_bytes(data, limits))
        seconds = time.perf_counter() - t0
        if got == "refused" and seconds > slowest[0]:
            slowest = (seconds, case.name)
        by_kind.setdefault(case.kind, Counter())[got] += 1
        if got != case.expected or (got == "ok" and detail):
            unexpected.append({"name": case.name, "kind": case.kind, "expected": case.expected, "got": got,
                               "detail": detail[:300]})
        details.append({"name": case.name, "kind": case.kind, "outcome": got, "detail": detail[:160]})
    totals = Counter()
    for counts in by_kind.values():
        totals.update(counts)
    summary = {
        "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels, "min_side": limits.min_side,
                   "max_side": limits.max_side, "background": list(limits.background)},
        "cases": sum(totals.values()), "ok": totals["ok"], "refused": totals["refused"],
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "slowest_refusal": {"case": slowest[1], "ms": round(1000 * slowest[0], 1)},
        "unexpected": unexpected,
    }
    if a.details:
        summary["details"] = details
    print(json.dumps(summary, indent=2))
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
