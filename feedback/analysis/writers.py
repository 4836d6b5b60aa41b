"""A report's files: `write_csv` writes its tables as CSV, `write_plots` its figures as PNG (with matplotlib).

Both take the JSON-ready dict of `feedback.analysis.report.analyze` and a folder, and return the paths they
wrote; the command line (`--csv`, `--plots`) and the admin tab call them.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from feedback.record.errors import InputError


def write_csv(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """conditions.csv, participants.csv, metric_agreement.csv and condition_tests.csv in `out_dir`; returns
    their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "conditions.csv": (["condition", "win_rate", "ci_low", "ci_high", "bt_score", "bt_ci_low", "bt_ci_high",
                            "n", "ties"],
                           [[name, c["win_rate"], *c["ci"], c["bt_score"], *c["bt_ci"], c["n"], c["ties"]]
                            for name, c in report["conditions"].items()]),
        "participants.csv": (["participant", "votes", "repeats", "consistency", "position_bias", "flagged", "reasons"],
                             [[p, r["votes"], r["repeats"], r["consistency"], r["position_bias"], r["flagged"],
                               "; ".join(r["reasons"])] for p, r in report["participants"].items()]),
        "metric_agreement.csv": (["metric", "agreement", "ci_low", "ci_high", "n", "pairwise_agreement",
                                  "pairwise_n", "gallery_agreement", "gallery_n", "gallery_chance"],
                                 [[m, a["rate"], *a["ci"], a["n"], a["pairwise"]["rate"], a["pairwise"]["n"],
                                   a["gallery"]["rate"], a["gallery"]["n"], a["gallery"]["chance"]]
                                  for m, a in report["metric_agreement"].items()]),
        "condition_tests.csv": (["a", "b", "bt_difference", "ci_low", "ci_high", "p", "p_holm", "significant"],
                                [[r["a"], r["b"], r["bt_difference"], *r["ci"], r["p"], r["p_holm"],
                                  r["significant"]] for r in report.get("condition_tests", {}).get("pairs", [])]),
    }
    paths = []
    for name, (header, rows) in tables.items():
        path = out / name
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows([["" if x is None else x for x in row] for row in rows])
        paths.append(path)
    return paths


def write_plots(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """PNG plots for the admin dashboard: win rates and Bradley-Terry scores with intervals, participant
    quality, metric agreement. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plots needs matplotlib: uv pip install --python .venv/bin/python matplotlib") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        paths.append(out / name)

    conditions = report["conditions"]
    names = sorted(conditions, key=lambda n: -_nan(conditions[n]["bt_score"]))  # best first
    for key, ci_key, title, name, ref in (("win_rate", "ci", "Win rate vs other conditions", "win_rates.png", 0.5),
                                          ("bt_score", "bt_ci", "Bradley-Terry log-strength", "bt_scores.png", 0.0)):
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3.5))
        values = np.array([_nan(conditions[n][key]) for n in names])
        low = np.array([_nan(conditions[n][ci_key][0]) for n in names])
        high = np.array([_nan(conditions[n][ci_key][1]) for n in names])
        ax.bar(names, values, yerr=np.nan_to_num([values - low, high - values]), capsize=4, color="#4c72b0")
        ax.axhline(ref, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(f"{title} ({int(report.get('n_votes', 0))} votes)")
        ax.tick_params(axis="x", rotation=30)
        save(fig, name)

    people = report["participants"]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for flagged, color in ((False, "#4c72b0"), (True, "#c44e52")):
        xs = [_nan(p["position_bias"]) for p in people.values() if p["flagged"] == flagged]
        ys = [_nan(p["consistency"]) for p in people.values() if p["flagged"] == flagged]
        ax.scatter(xs, ys, c=color, label="flagged" if flagged else "ok")
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel="share of first-shown picks", ylabel="test-retest agreement",
           title="Participants")
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.legend(loc="lower left")
    save(fig, "participants.png")

    agreement = report["metric_agreement"]
    fig, ax = plt.subplots(figsize=(max(4, 1.0 * len(agreement) + 2), 3.5))
    rates = np.array([_nan(a["rate"]) for a in agreement.values()])
    low = np.array([_nan(a["ci"][0]) for a in agreement.values()])
    high = np.array([_nan(a["ci"][1]) for a in agreement.values()])
    ax.bar([f"{m}\n(n={a['n']})" for m, a in agreement.items()], rates, color="#55a868",
           yerr=np.nan_to_num([rates - low, high - rates]), capsize=4)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set(ylim=(0, 1), title="Metric agrees with the person (pairs, 95% interval)")
    save(fig, "metric_agreement.png")

    regions = report.get("regions") or {}
    if regions:
        fig, axes = plt.subplots(1, len(regions), figsize=(2.6 * len(regions), 2.8), squeeze=False)
        for ax, (condition, r) in zip(axes[0], regions.items(), strict=True):
            ax.imshow(np.array(r["grid"]), cmap="magma", extent=(0, 1, 1, 0), vmin=0)
            ax.set(title=f"{condition} ({r['boxes']} boxes)", xticks=[], yticks=[])
        save(fig, "regions.png")
    return paths


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)
