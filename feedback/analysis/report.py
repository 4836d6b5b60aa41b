"""Analysis of the preference record: which condition people prefer, how reliable each person is, how well
people agree with each other and with the automated metrics.

Everything works on plain `Vote` rows (one per human preference pair); `load_votes` reads them from the
database (both in `feedback.analysis.votes`, with `AnalysisConfig`); `feedback.analysis.writers` writes the
report's CSV tables and plots. A gallery vote of a study (K > 2 images, best picked, worst optionally marked) is stored as the pairs
it implies (the best beats each other image, each other image beats the worst), so win rates, Bradley-Terry,
alpha and metric agreement read it as pairs; test-retest and position picks of galleries use the whole
judgment (the best image of a shown set), grouped by `Vote.choice_id`. A vote compares two images of one
round; each image belongs to a *condition*, named by `condition_by`:
  'method'      the candidate's `method` (in a study round each shown image is one system's output,
                e.g. 'sipl', 'ttpo-human', 'ttpo-metric'), the default;
  'arm+method'  '<arm>/<method>', arm = the round's condition, else its session's, else its backbone.

    python -m feedback.analysis.report --db sqlite:///data/ttpo.sqlite3 --json
    python -m feedback.analysis.report --db URL --csv out/tables --plots out/plots
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from feedback.analysis import stats
from feedback.analysis.votes import BOOTSTRAP_UNITS, CONDITION_KEYS, AnalysisConfig, Vote, load_votes
from feedback.analysis.writers import write_csv, write_plots
from feedback.record.choices import superseded_choices
from feedback.record.db import DB_URL_ENV, Database, open_database, resolve_db_url
from feedback.record.errors import InputError
from feedback.studies.regions import region_summary

#: pyiqa metrics where a lower score is better (pyiqa's `lower_better`); every other metric, and the
#: fused z-score 'fused', is higher-better.
LOWER_BETTER_METRICS = frozenset({
    "afine_all", "afine_all_scale", "afine_fr", "afine_nr", "brisque", "brisque_matlab", "deepdc", "dists",
    "fid", "fid_dinov2", "gmsd", "ilniqe", "lpips", "lpips+", "lpips-vgg", "lpips-vgg+", "mad", "msswd",
    "niqe", "niqe_matlab", "nlpd", "pi", "pieapp", "piqe", "sfid", "stlpips", "stlpips-vgg",
})


# -------------------------------------------------------------------------------------- conditions
def _unit_win_matrices(votes: Sequence[Vote], names: list[str], unit: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    units: dict[Any, np.ndarray] = {}
    for n, vote in enumerate(votes):
        a, b = index[vote.chosen_condition], index[vote.rejected_condition]
        key = vote.annotator if unit == "participant" else n
        wins = units.setdefault(key, np.zeros((len(names), len(names))))
        if vote.is_tie:
            wins[a, b] += 0.5
            wins[b, a] += 0.5
        else:
            wins[a, b] += 1.0
    return np.stack(list(units.values())) if units else np.zeros((0, len(names), len(names)))


@dataclass(frozen=True)
class ConditionFit:
    """Bradley-Terry over the votes between conditions and its bootstrap: `bt_replicates` (B, K) are the scores
    of the resampled win matrices (participants or votes resampled together for every condition)."""

    names: list[str]
    wins: np.ndarray
    resampled: np.ndarray
    bt: np.ndarray
    bt_replicates: np.ndarray


def fit_conditions(votes: Sequence[Vote], config: AnalysisConfig = AnalysisConfig()) -> ConditionFit | None:
    """The fit `condition_summary` and `condition_tests` read; None without votes between two conditions."""
    between = [v for v in votes if v.chosen_condition != v.rejected_condition]
    names = sorted({c for v in between for c in (v.chosen_condition, v.rejected_condition)})
    if not names:
        return None
    unit_wins = _unit_win_matrices(between, names, config.bootstrap_unit)
    resampled = stats.bootstrap_win_matrices(unit_wins, config.n_resamples, config.seed)
    return ConditionFit(names, unit_wins.sum(axis=0), resampled, stats.bradley_terry(unit_wins.sum(axis=0)),
                        np.stack([stats.bradley_terry(w) for w in resampled]))


def condition_summary(votes: Sequence[Vote], config: AnalysisConfig = AnalysisConfig(),
                      fit: ConditionFit | None = None) -> dict[str, dict]:
    """Per condition: win rate against the other conditions and Bradley-Terry log-strength, with bootstrap
    percentile intervals; `n` counts its votes against another condition (votes within one condition are
    left out: they say nothing about conditions)."""
    between = [v for v in votes if v.chosen_condition != v.rejected_condition]
    fit = fit or fit_conditions(votes, config)
    if fit is None:
        return {}
    names, wins, resampled = fit.names, fit.wins, fit.resampled
    rate, bt = stats.win_rates(wins), fit.bt
    rate_lo, rate_hi = stats.bootstrap_statistic(resampled, stats.win_rates, config.level)
    bt_lo, bt_hi = stats.percentile_interval(fit.bt_replicates, config.level)
    ties = defaultdict(int)
    for v in between:
        if v.is_tie:
            ties[v.chosen_condition] += 1
            ties[v.rejected_condition] += 1
    games = wins + wins.T
    return {name: {"win_rate": _num(rate[i]), "ci": [_num(rate_lo[i]), _num(rate_hi[i])],
                   "bt_score": _num(bt[i]), "bt_ci": [_num(bt_lo[i]), _num(bt_hi[i])],
                   "n": round(float(games[i].sum())), "ties": ties[name]}
            for i, name in enumerate(names)}


#: How `condition_tests` corrects for testing every pair of conditions.
TEST_CORRECTION = "Holm-Bonferroni over all pairs of conditions (family-wise error rate 1 - level)"


def condition_tests(fit: ConditionFit | None, config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """Is condition a stronger than b? For each pair, the paired bootstrap of the Bradley-Terry difference
    d = bt_a - bt_b (both scores from the same resample, so their dependence is kept): its percentile interval and
    the two-sided p-value 2 * min(P(d* <= 0), P(d* >= 0)) with the (count + 1) / (B + 1) correction (Davison and
    Hinkley 1997, eq. 4.11), Holm-Bonferroni adjusted over the pairs (Holm 1979)."""
    alpha = 1 - config.level
    if fit is None:
        return {"method": "paired bootstrap of Bradley-Terry differences", "correction": TEST_CORRECTION,
                "alpha": alpha, "pairs": []}
    reps = fit.bt_replicates
    b = reps.shape[0]
    rows = []
    for i in range(len(fit.names)):
        for j in range(i + 1, len(fit.names)):
            d = reps[:, i] - reps[:, j]
            p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (b + 1), (np.sum(d >= 0) + 1) / (b + 1)))
            low, high = stats.percentile_interval(d[:, None], config.level)
            rows.append({"a": fit.names[i], "b": fit.names[j], "bt_difference": _num(fit.bt[i] - fit.bt[j]),
                         "ci": [_num(low[0]), _num(high[0])], "p": float(p)})
    for row, adjusted in zip(rows, stats.holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
        row["significant"] = adjusted < alpha
    return {"method": "paired bootstrap of Bradley-Terry differences", "correction": TEST_CORRECTION,
            "alpha": alpha, "resamples": b, "unit": config.bootstrap_unit, "pairs": rows}


# ------------------------------------------------------------------------------------ participants
def unit_key(vote: Vote) -> tuple[str, str]:
    """The judged item: the unordered pair of images, in a fixed (sorted) order."""
    return tuple(sorted((vote.chosen_image, vote.rejected_image)))  # type: ignore[return-value]


def outcome(vote: Vote) -> str:
    """'first' or 'second' (which image of `unit_key` won) or 'tie': comparable across units and people."""
    if vote.is_tie:
        return "tie"
    return "first" if vote.chosen_image == unit_key(vote)[0] else "second"


def gallery_judgments(votes: Sequence[Vote]) -> list[tuple[tuple[str, ...], str, int, int]]:
    """One (shown images sorted, best image, best's position, K) per gallery vote among `votes`: the best is
    the image of the vote's pairs that is never the rejected one."""
    by_choice: dict[str, list[Vote]] = defaultdict(list)
    for vote in votes:
        if vote.gallery_size:
            by_choice[vote.choice_id].append(vote)
    judgments = []
    for pairs in by_choice.values():
        rejected = {v.rejected_image for v in pairs}
        best = next(v for v in pairs if v.chosen_image not in rejected)
        images = {i for v in pairs for i in (v.chosen_image, v.rejected_image)}
        judgments.append((tuple(sorted(images)), best.chosen_image, best.chosen_position, best.gallery_size))
    return judgments


def participant_quality(votes: Sequence[Vote], config: AnalysisConfig = AnalysisConfig()) -> dict[str, dict]:
    """Per participant: votes, test-retest consistency, position bias, and an inattentive flag with reasons.

    consistency: over items judged more than once (a study repeats pairs with sides swapped, galleries with
    their order rotated), the share of repeats whose outcome equals the first judgment (pairs: the same image
    won or a tie again; chance 0.5, and a person who always picks the left image scores 0 on swapped repeats;
    galleries: the same best image picked). position_bias: share of decisive votes won by the image shown
    first (lower position); 0.5 when position does not matter. Participants with gallery votes also get
    position_picks: the share of their gallery picks at each position '1'..'K' (chance 1/K each); a share of
    at least `extreme_position_bias` at one position flags them.
    """
    by_person: dict[str, list[Vote]] = defaultdict(list)
    for vote in votes:
        by_person[vote.annotator].append(vote)
    report = {}
    for person, own in sorted(by_person.items()):
        judged: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for vote in own:
            if not vote.gallery_size:
                judged[unit_key(vote)].append(outcome(vote))
        galleries = gallery_judgments(own)
        for shown, best, _position, _k in galleries:
            judged[shown].append(best)
        repeats = [(results[0], later) for results in judged.values() for later in results[1:]]
        consistency = stats.agreement_rate(repeats)
        decisive = [v for v in own if not v.is_tie and v.chosen_position != v.rejected_position]
        first = sum(v.chosen_position < v.rejected_position for v in decisive)
        bias = first / len(decisive) if decisive else None
        reasons = []
        if consistency is not None and len(repeats) >= config.min_repeats and consistency <= config.chance_consistency:
            reasons.append(f"consistency {consistency:.2f} over {len(repeats)} repeated pairs is at chance "
                           f"(<= {config.chance_consistency:.2f}; chance is 0.50)")
        limit = config.extreme_position_bias
        if bias is not None and len(decisive) >= config.min_position_votes and (bias >= limit or bias <= 1 - limit):
            reasons.append(f"picked the first-shown image in {bias:.0%} of {len(decisive)} decisive votes "
                           f"(extreme: >= {limit:.0%} or <= {1 - limit:.0%})")
        report[person] = {"votes": len(own), "repeats": len(repeats), "consistency": consistency,
                          "position_bias": bias, "flagged": bool(reasons), "reasons": reasons}
        if galleries:
            k = max(g[3] for g in galleries)
            picks = defaultdict(int)
            for _shown, _best, position, _k in galleries:
                picks[position] += 1
            shares = {str(p + 1): picks[p] / len(galleries) for p in range(k)}
            top = max(shares, key=shares.get)
            if len(galleries) >= config.min_position_votes and shares[top] >= limit:
                reasons.append(f"picked the image at position {top} in {shares[top]:.0%} of {len(galleries)} "
                               f"gallery votes (chance {1 / k:.0%}; extreme: >= {limit:.0%})")
            report[person].update(position_picks=shares, flagged=bool(reasons))
    return report


def annotator_alpha(votes: Sequence[Vote]) -> float | None:
    """Krippendorff's alpha (nominal) over items judged by several people: each person's first outcome."""
    ratings: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for vote in votes:
        ratings[unit_key(vote)].setdefault(vote.annotator, outcome(vote))
    return stats.krippendorff_alpha_nominal(ratings)


# ------------------------------------------------------------------------------------------- metrics
def _metric_pick_matches(metric: str, shown: Sequence[str], best: str, scores: Mapping[str, Mapping[str, Any]],
                         lower_better: frozenset[str]) -> float | None:
    """1 when the metric's best of the shown images is the people's best, 1/m when it ties m images including it,
    0 otherwise; None when an image lacks a finite score."""
    values = [scores.get(image, {}).get(metric) for image in shown]
    if not all(_finite(v) for v in values):
        return None
    signed = [-v if metric in lower_better else v for v in values]
    top = [image for image, v in zip(shown, signed, strict=True) if v == max(signed)]
    return 1.0 / len(top) if best in top else 0.0


def metric_agreement(votes: Sequence[Vote], config: AnalysisConfig = AnalysisConfig(),
                     lower_better: frozenset[str] = LOWER_BETTER_METRICS) -> dict[str, dict[str, Any]]:
    """Per stored metric, how often its pick matches the people's:
      rate, ci, n   over decisive preference pairs (pairwise votes and the pairs gallery votes imply) where both
                    images have a finite score: the share where the metric ranks the chosen image above the
                    rejected one (equal scores count half; chance 0.5), with a bootstrap percentile interval
                    (resampling `config.bootstrap_unit`s) and the number of comparisons;
      pairwise      the same over pairwise (two-image) votes only;
      gallery       over gallery votes: the share where the metric's best of the shown images is the one the
                    person picked (chance 1/K, `chance` the mean over the votes)."""
    scores: dict[str, dict[str, Any]] = {}
    for vote in votes:
        scores.setdefault(vote.chosen_image, dict(vote.chosen_scores))
        scores.setdefault(vote.rejected_image, dict(vote.rejected_scores))
    pairs: dict[str, list[tuple[Any, float]]] = defaultdict(list)  # metric -> (unit, outcome)
    pairwise: dict[str, list[float]] = defaultdict(list)
    for n, vote in enumerate(votes):
        if vote.is_tie:
            continue
        unit = vote.annotator if config.bootstrap_unit == "participant" else n
        for metric, chosen in vote.chosen_scores.items():
            rejected = vote.rejected_scores.get(metric)
            if not _finite(chosen) or not _finite(rejected):
                continue
            margin = (rejected - chosen) if metric in lower_better else (chosen - rejected)
            hit = 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0
            pairs[metric].append((unit, hit))
            if not vote.gallery_size:
                pairwise[metric].append(hit)
    gallery: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for shown, best, _position, k in gallery_judgments(votes):
        for metric in scores.get(best, {}):
            hit = _metric_pick_matches(metric, shown, best, scores, lower_better)
            if hit is not None:
                gallery[metric].append((hit, k))
    report = {}
    for metric in sorted(set(pairs) | set(gallery)):
        outcomes = pairs.get(metric, [])
        low, high = _bootstrap_share(outcomes, config)
        hits = [h for _u, h in outcomes]
        judged = gallery.get(metric, [])
        report[metric] = {
            "rate": sum(hits) / len(hits) if hits else None, "ci": [low, high], "n": len(hits),
            "pairwise": {"rate": _mean(pairwise.get(metric, [])), "n": len(pairwise.get(metric, []))},
            "gallery": {"rate": _mean([h for h, _k in judged]), "n": len(judged),
                        "chance": _mean([1 / k for _h, k in judged])}}
    return report


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _bootstrap_share(outcomes: Sequence[tuple[Any, float]], config: AnalysisConfig) -> tuple[float | None, float | None]:
    """Percentile interval of the share of hits, resampling whole units (participants or votes)."""
    if not outcomes:
        return None, None
    units: dict[Any, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for unit, hit in outcomes:
        units[unit][0] += hit
        units[unit][1] += 1
    sums = np.array(list(units.values()))  # (U, 2): hits, comparisons
    rng = np.random.default_rng(config.seed)
    counts = rng.multinomial(len(sums), np.full(len(sums), 1.0 / len(sums)), size=config.n_resamples)
    totals = counts @ sums
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = totals[:, 0] / totals[:, 1]
    low, high = stats.percentile_interval(shares[:, None], config.level)
    return _num(low[0]), _num(high[0])


# -------------------------------------------------------------------------------------------- report
def analyze(votes: Sequence[Vote], config: AnalysisConfig = AnalysisConfig(),
            regions: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> dict[str, Any]:
    """The whole report as one JSON-ready dict (the `--json` contract); `participants` lists everyone,
    the other parts use only unflagged participants when `config.exclude_flagged`. `regions`: (condition, box)
    region marks (`feedback.analysis.votes.load_regions`), summarised per condition as a heat map."""
    participants = participant_quality(votes, config)
    excluded = sorted(p for p, r in participants.items() if r["flagged"]) if config.exclude_flagged else []
    kept = [v for v in votes if v.annotator not in set(excluded)]
    fit = fit_conditions(kept, config)
    return {
        "n_votes": len(kept),
        "n_participants": len({v.annotator for v in kept}),
        "excluded_participants": excluded,
        "conditions": condition_summary(kept, config, fit),
        "condition_tests": condition_tests(fit, config),
        "krippendorff_alpha": annotator_alpha(kept),
        "participants": participants,
        "metric_agreement": metric_agreement(kept, config),
        "regions": region_summary(regions),
    }


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any) -> float | None:
    return float(x) if _finite(float(x)) else None


def open_existing_database(url: str | None, data_dir: str | Path) -> Database:
    """The database to read, without migrating or creating it: a missing SQLite file is an error."""
    resolved = resolve_db_url(url, data_dir)
    parsed = make_url(resolved)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).is_file():
        raise InputError(f"no database file at {parsed.database}; pass the --db the app wrote to")
    return open_database(resolved, migrate=False)


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(prog="python -m feedback.analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help=f"database URL (default: ${DB_URL_ENV} or DATA_DIR)")
    parser.add_argument("--data-dir", default="data", help="where the default SQLite file lives")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--csv", metavar="DIR", help="write conditions/participants/metric_agreement CSV tables")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots")
    parser.add_argument("--study", default=None, help="only votes of this study id")
    parser.add_argument("--condition-by", choices=CONDITION_KEYS, default="method")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--bootstrap-unit", choices=BOOTSTRAP_UNITS, default="participant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude-flagged", action="store_true",
                        help="leave flagged (inattentive) participants out of every summary but their own table")
    args = parser.parse_args(argv)
    try:
        config = AnalysisConfig(n_resamples=args.resamples, seed=args.seed, bootstrap_unit=args.bootstrap_unit,
                                exclude_flagged=args.exclude_flagged)
        database = open_existing_database(args.db, args.data_dir)
        try:
            with database.sessions() as s:
                votes = load_votes(s, condition_by=args.condition_by, study_id=args.study)
                superseded = superseded_choices(s, study_id=args.study)
        finally:
            database.engine.dispose()
        report = analyze(votes, config) | {"superseded_choices": superseded}
        if args.csv:
            write_csv(report, args.csv)
        if args.plots:
            write_plots(report, args.plots)
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    except SQLAlchemyError as exc:
        parser.exit(2, f"error: cannot read the preference database ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0]}); is it migrated? python -m feedback.record.db upgrade --db URL\n")
    if args.json or not (args.csv or args.plots):
        json.dump(report, sys.stdout, indent=None if args.json else 2, allow_nan=False)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
