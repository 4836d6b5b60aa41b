"""Adaptive pair sampling for pairwise studies: the next main item is the comparison that is expected to teach
the most about the conditions' strengths, given the study's votes so far.

Model: Bradley-Terry, P(i beats j) = sigmoid(theta_i - theta_j), with a Gaussian prior N(0, PRIOR_VAR) on each
log-strength theta. The posterior is approximated by a Gaussian at its mode (Laplace): Newton's method finds the
mode, the covariance is the inverse of the negative Hessian. Comparisons already handed out but not answered yet
(*pending*, e.g. another participant's open item) add their expected Fisher information to that precision without
moving the mode, so participants judging at the same time are spread over different pairs instead of all being
sent to the one most uncertain pair.

Score: the expected information gain of the outcome y of comparing i and j about theta (the mutual information
I(y; theta) = H(E[p]) - E[H(p)], p = sigmoid(theta_i - theta_j); BALD, Houlsby et al. 2011, eq. 2, the criterion
ASAP, Mikhailiuk et al. 2021, maximises on a Thurstone model), in bits, with the expectation over the posterior of
theta_i - theta_j by Gauss-Hermite quadrature. The pair with the highest gain is shown; exact ties (the first
items of a study, when every pair is alike) go to the pair shown least, then to a seeded draw. Its stimulus is the
one this participant has seen least, then the one shown least with that pair in the study, then a seeded draw;
its sides a seeded coin. So a choice is a pure function of (the votes, the pending items, the study seed, the
participant index, the item position): `SamplerState` holds the first two, `choose_adaptive_item` makes it.

Repeats (sides swapped, after their first showing) and attention checks keep the places a seeded plan gives them
(`adaptive_slots`), as in the Latin-square plan (`feedback.studies.plan.assign_items`).

NumPy only; `feedback.studies.participants` builds the state from the database under a lock of the study row, and
`feedback.studies.simulate` runs the same functions on simulated participants.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feedback.studies.plan import PlannedItem
from feedback.studies.study import (
    ATTENTION_CLEAN,
    ATTENTION_CONTROL,
    StudyDefinition,
)

#: Prior variance of each Bradley-Terry log-strength (sd 1.5: a 95% prior range of about +-3, P(win) 0.05..0.95).
PRIOR_VAR = 2.25
GAUSS_HERMITE_NODES = 24
_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(GAUSS_HERMITE_NODES)
TIE_TOLERANCE = 1e-9  # gains this close to the best count as ties (bits)


def bt_posterior(wins: np.ndarray, pending: np.ndarray | None = None, prior_var: float = PRIOR_VAR,
                 tol: float = 1e-10, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(K, K) win matrix (W[i, j]: times i beat j, ties half each way) -> (mode (K,), covariance (K, K)) of the
    Laplace-approximated Bradley-Terry posterior under the N(0, prior_var) prior (Newton's method on the log
    posterior). `pending` (K, K), symmetric counts of unanswered comparisons, adds its Fisher information to the
    precision only."""
    wins = np.asarray(wins, dtype=np.float64).copy()
    k = wins.shape[0]
    np.fill_diagonal(wins, 0.0)
    games = wins + wins.T
    theta = np.zeros(k)
    eye = np.eye(k) / prior_var

    def precision(t: np.ndarray, counts: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(t[:, None] - t[None, :])))
        weight = counts * p * (1.0 - p)
        return np.diag(weight.sum(axis=1)) - weight + eye

    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        gradient = (wins * (1.0 - p)).sum(axis=1) - (wins.T * p).sum(axis=1) - theta / prior_var
        step = np.linalg.solve(precision(theta, games), gradient)
        theta = theta + step
        if np.max(np.abs(step)) < tol:
            break
    counts = games if pending is None else games + np.asarray(pending, dtype=np.float64)
    return theta, np.linalg.inv(precision(theta, counts))


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def information_gain(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """(K,) posterior mean and (K, K) covariance -> (K, K) expected information gain in bits of comparing i and
    j: H(E[p]) - E[H(p)] with p = sigmoid(d), d = theta_i - theta_j ~ N(mean_i - mean_j, var_ij) (BALD,
    Houlsby et al. 2011, eq. 2), the expectation by Gauss-Hermite quadrature. Diagonal 0."""
    mu = mean[:, None] - mean[None, :]
    var = np.diag(cov)[:, None] + np.diag(cov)[None, :] - 2 * cov
    sd = np.sqrt(np.maximum(var, 0.0))
    d = mu[..., None] + np.sqrt(2.0) * sd[..., None] * _NODES  # (K, K, nodes)
    p = 1.0 / (1.0 + np.exp(-d))
    w = _WEIGHTS / np.sqrt(np.pi)
    gain = _entropy_bits((p * w).sum(axis=-1)) - (_entropy_bits(p) * w).sum(axis=-1)
    np.fill_diagonal(gain, 0.0)
    return np.maximum(gain, 0.0)


@dataclass
class SamplerState:
    """What an adaptive choice depends on: the study's answered and pending main comparisons.

    wins[i, j]: answered votes where condition i beat j (ties half each way); pending[i, j] (symmetric): shown and
    not answered yet; cells[(stimulus, pair index)]: how often a stimulus was shown with a pair (answered or not)."""

    conditions: tuple[str, ...]
    wins: np.ndarray = field(init=False)
    pending: np.ndarray = field(init=False)
    cells: dict[tuple[int, int], int] = field(default_factory=dict)
    n_votes: int = 0

    def __post_init__(self) -> None:
        k = len(self.conditions)
        self.wins, self.pending = np.zeros((k, k)), np.zeros((k, k))
        self._index = {c: i for i, c in enumerate(self.conditions)}
        self._pairs = {pair: q for q, pair in enumerate(self.pairs)}

    @property
    def pairs(self) -> list[tuple[int, int]]:
        k = len(self.conditions)
        return [(i, j) for i in range(k) for j in range(i + 1, k)]

    def pair_index(self, a: str, b: str) -> int:
        i, j = sorted((self._index[a], self._index[b]))
        return self._pairs[i, j]

    def add(self, stimulus: int, left: str, right: str, answer: str | None) -> None:
        """One main item of the study: answered ('left' | 'right' | 'tie') or pending (None)."""
        if left not in self._index or right not in self._index:
            return  # not a comparison of two conditions (attention check)
        a, b = self._index[left], self._index[right]
        self.cells[stimulus, self.pair_index(left, right)] = self.cells.get((stimulus, self.pair_index(left, right)),
                                                                             0) + 1
        if answer is None:
            self.pending[a, b] += 1
            self.pending[b, a] += 1
            return
        self.n_votes += 1
        if answer == "tie":
            self.wins[a, b] += 0.5
            self.wins[b, a] += 0.5
        else:
            winner, loser = (a, b) if answer == "left" else (b, a)
            self.wins[winner, loser] += 1.0

    def answer(self, stimulus: int, left: str, right: str, answer: str) -> None:
        """A pending item got its answer."""
        a, b = self._index[left], self._index[right]
        self.pending[a, b] -= 1
        self.pending[b, a] -= 1
        self.cells[stimulus, self.pair_index(left, right)] -= 1
        self.add(stimulus, left, right, answer)

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        return bt_posterior(self.wins, self.pending)


@dataclass(frozen=True)
class AdaptiveChoice:
    """An adaptive main item and why it was chosen: its expected information gain (bits) and the votes seen."""

    item: PlannedItem
    score: float
    n_votes: int


def choose_adaptive_item(study: StudyDefinition, state: SamplerState, participant_index: int, position: int,
                         seed: int, seen_stimuli: dict[int, int] | None = None) -> AdaptiveChoice:
    """The main item at `position` of a participant: the pair of highest expected information gain (module
    docstring), a stimulus the participant has seen least (`seen_stimuli`: stimulus -> main items so far), seeded
    sides. Deterministic given the state, seed, participant index and position."""
    rng = random.Random(f"{seed}:adaptive:{participant_index}:{position}")
    mean, cov = state.posterior()
    gain = information_gain(mean, cov)
    pairs = state.pairs
    scores = np.array([gain[i, j] for i, j in pairs])
    best = scores.max()
    shown = state.wins + state.wins.T + state.pending
    tied = [q for q in range(len(pairs)) if scores[q] >= best - TIE_TOLERANCE]
    fewest = min(shown[pairs[q]] for q in tied)
    tied = [q for q in tied if shown[pairs[q]] == fewest]
    q = tied[rng.randrange(len(tied))]
    seen = seen_stimuli or {}
    n_stimuli = len(study.stimuli)
    order = list(range(n_stimuli))
    rng.shuffle(order)
    stimulus = min(order, key=lambda j: (seen.get(j, 0), state.cells.get((j, q), 0)))
    a, b = (state.conditions[i] for i in pairs[q])
    left, right = (b, a) if rng.random() < 0.5 else (a, b)
    return AdaptiveChoice(PlannedItem(position=position, stimulus=stimulus, left=left, right=right),
                          float(scores[q]), state.n_votes)


def adaptive_slots(study: StudyDefinition, participant_index: int, seed: int) -> list[dict[str, Any]]:
    """The places of a participant's items in an adaptive study, in order: {'main': t} (the t-th main item,
    chosen when it is reached), {'repeat_of_main': t} (main item t again with sides swapped, always after it) or
    {'attention': PlannedItem} (an attention check, as in the Latin-square plan)."""
    rng = random.Random(f"{seed}:{participant_index}:adaptive")
    n_main = study.n_main_items
    sequence: list[dict[str, Any]] = [{"main": t} for t in range(n_main)]
    for original in sorted(rng.sample(range(n_main), study.n_repeats), reverse=True):
        sequence.insert(rng.randint(original + 1, len(sequence)), {"repeat_of_main": original})
    for _ in range(study.attention_checks):
        clean_left = rng.random() < 0.5
        sequence.insert(rng.randint(1 if sequence else 0, len(sequence)), {"attention": (
            rng.randrange(len(study.stimuli)), clean_left)})
    slots = []
    for position, entry in enumerate(sequence):
        if "attention" in entry:
            stimulus, clean_left = entry["attention"]
            entry = {"attention": PlannedItem(
                position=position, stimulus=stimulus, left=ATTENTION_CLEAN if clean_left else ATTENTION_CONTROL,
                right=ATTENTION_CONTROL if clean_left else ATTENTION_CLEAN, is_attention_check=True,
                expected="left" if clean_left else "right")}
        slots.append(entry)
    return slots


def repeat_item(first: PlannedItem, position: int) -> PlannedItem:
    """A repeat of main item `first` at `position`: same stimulus, sides swapped."""
    return PlannedItem(position=position, stimulus=first.stimulus, left=first.right, right=first.left,
                       is_repeat=True, repeat_of=first.position)
