"""How many votes a study needs to recover a planted order: simulated participants through the study's own samplers.

Conditions c0..c{N-1} get planted Thurstone strengths `spacing` apart (shuffled per repeat, so the definition order
says nothing); a simulated participant judges an item by perceiving each image's quality as its strength plus
Gaussian noise of sd `noise` (Thurstone case V: P(a beats b) = Phi((s_a - s_b) / (noise * sqrt 2))) and picking
the better one. Participants come one after another, each judging `items` main items of a pairwise study over
`stimuli` images (no repeats or attention checks), chosen by the Latin-square plan (`feedback.studies.plan.assign_items`)
or by adaptive sampling (`feedback.studies.sampling`, exactly as `feedback.studies.participants` calls them). After each
vote the order is estimated (the mode of the same Bradley-Terry posterior for both samplers) and compared with
the planted one by Kendall's tau. `votes_to_recover` is the number of votes after which tau stays >= `threshold`
to the end of the run (P x items votes); a run that does not end recovered counts as budget + 1 (`censored`
says how many). The figure printed is the median over `repeats` runs, each with its own seed.

    python -m feedback.simulate --conditions 8 --participants 60 --noise 1.0 --seed 0 --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from feedback.studies.plan import assign_items
from feedback.studies.sampling import (
    SamplerState,
    adaptive_slots,
    bt_posterior,
    choose_adaptive_item,
)
from feedback.studies.study import SAMPLINGS, StudyDefinition


@dataclass(frozen=True)
class SimulationConfig:
    """conditions N, participants P, Thurstone noise sd, planted spacing, stimuli, main items per participant,
    repeats (runs per sampler), seed, Kendall tau threshold."""

    conditions: int
    participants: int
    noise: float = 1.0
    spacing: float = 0.5
    stimuli: int = 4
    items: int = 12
    repeats: int = 11
    seed: int = 0
    threshold: float = 0.9

    def __post_init__(self) -> None:
        checks = [(2 <= self.conditions <= 32, "conditions must be in 2..32"),
                  (1 <= self.participants <= 10_000, "participants must be in 1..10000"),
                  (self.noise > 0 and self.spacing > 0, "noise and spacing must be > 0"),
                  (1 <= self.stimuli <= 100 and 1 <= self.items <= 500, "stimuli in 1..100, items in 1..500"),
                  (1 <= self.repeats <= 1000, "repeats must be in 1..1000"),
                  (0 < self.threshold <= 1, "threshold must be in (0, 1]")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def kendall_tau(planted: np.ndarray, estimate: np.ndarray) -> float:
    """Kendall's tau-a between two score vectors (K,): (concordant - discordant) / (K (K - 1) / 2)."""
    i, j = np.triu_indices(len(planted), 1)
    return float(np.mean(np.sign(planted[i] - planted[j]) * np.sign(estimate[i] - estimate[j])))


def simulated_study(config: SimulationConfig, sampling: str, seed: int) -> StudyDefinition:
    return StudyDefinition(
        name="simulation", images=tuple(f"image-{j}" for j in range(config.stimuli)),
        conditions=tuple(f"c{k}" for k in range(config.conditions)), consent_text="simulated", consent_version="v1",
        items_per_participant=config.items, repeat_share=0.0, attention_checks=0, seed=seed, sampling=sampling)


def run_once(config: SimulationConfig, sampling: str, repeat: int) -> list[float]:
    """Kendall's tau of the estimated order after each vote of one simulated study."""
    seed = config.seed * 1000 + repeat
    rng = np.random.default_rng([seed, 7])
    study = simulated_study(config, sampling, seed)
    strength = dict(zip(study.conditions, config.spacing * rng.permutation(config.conditions), strict=True))
    planted = np.array([strength[c] for c in study.conditions])
    state = SamplerState(study.conditions)
    taus = []
    for participant in range(config.participants):
        planned = iter(assign_items(study, participant, seed)) if sampling == "latin" else None
        seen: dict[int, int] = {}
        for position, _slot in enumerate(adaptive_slots(study, participant, seed)):
            if planned is not None:
                item = next(planned)
            else:
                item = choose_adaptive_item(study, state, participant, position, seed, seen).item
            seen[item.stimulus] = seen.get(item.stimulus, 0) + 1
            left_wins = (strength[item.left] + rng.normal(0, config.noise)
                         > strength[item.right] + rng.normal(0, config.noise))
            state.add(item.stimulus, item.left, item.right, "left" if left_wins else "right")
            taus.append(kendall_tau(planted, bt_posterior(state.wins)[0]))
    return taus


def votes_to_recover(taus: list[float], threshold: float) -> int | None:
    """The number of votes after which tau stays >= threshold to the end; None when the run ends below it."""
    below = [n for n, tau in enumerate(taus, start=1) if tau < threshold]
    if below and below[-1] == len(taus):
        return None
    return below[-1] + 1 if below else 1


def simulate(config: SimulationConfig) -> dict[str, Any]:
    """{sampler: {votes_to_recover (median), per_repeat, censored, budget, final_tau_median}} for both samplers,
    plus the ratio adaptive / latin of the medians and the settings."""
    budget = config.participants * config.items
    out: dict[str, Any] = {}
    for sampling in SAMPLINGS:
        runs = [run_once(config, sampling, r) for r in range(config.repeats)]
        found = [votes_to_recover(taus, config.threshold) for taus in runs]
        counted = [budget + 1 if n is None else n for n in found]
        out[sampling] = {"votes_to_recover": math.ceil(float(np.median(counted))), "per_repeat": counted,
                         "censored": sum(n is None for n in found), "budget": budget,
                         "final_tau_median": float(np.median([taus[-1] for taus in runs]))}
    out["ratio"] = out["adaptive"]["votes_to_recover"] / out["latin"]["votes_to_recover"]
    out["config"] = asdict(config)
    out["repeats"] = config.repeats
    out["estimator"] = "mode of the Bradley-Terry posterior (prior sd 1.5) after each vote, same for both samplers"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m feedback.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", type=int, required=True, help="number of conditions N")
    parser.add_argument("--participants", type=int, required=True, help="simulated participants P (in turn)")
    parser.add_argument("--noise", type=float, default=1.0, help="Thurstone perception noise sd (default 1.0)")
    parser.add_argument("--spacing", type=float, default=0.5, help="planted strength step between conditions")
    parser.add_argument("--stimuli", type=int, default=4, help="images in the simulated study")
    parser.add_argument("--items", type=int, default=12, help="main items per participant")
    parser.add_argument("--repeats", type=int, default=11, help="runs per sampler; the median is reported")
    parser.add_argument("--threshold", type=float, default=0.9, help="Kendall tau that counts as recovered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default prints it indented)")
    args = parser.parse_args(argv)
    try:
        config = SimulationConfig(args.conditions, args.participants, args.noise, args.spacing, args.stimuli,
                                  args.items, args.repeats, args.seed, args.threshold)
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    report = simulate(config)
    json.dump(report, sys.stdout, indent=None if args.json else 2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
