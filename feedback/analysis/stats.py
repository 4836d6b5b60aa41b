"""The math of preference studies over plain numbers: Bradley-Terry strengths, win rates, bootstrap
intervals, Krippendorff's alpha. NumPy only (no torch, no database).

Comparisons between K items are held in a win matrix `W` of shape (K, K), float: `W[i, j]` is how
often i beat j, a tie adding 0.5 to both `W[i, j]` and `W[j, i]`; the diagonal is ignored.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

#: Pseudo-comparisons per pair of items, split half/half, added before fitting Bradley-Terry: keeps every
#: strength finite (an item that never won) and the comparison graph connected. Tiny next to real data.
BT_PRIOR_GAMES = 0.1


def _check_win_matrix(wins: np.ndarray) -> np.ndarray:
    wins = np.asarray(wins, dtype=np.float64)
    if wins.ndim != 2 or wins.shape[0] != wins.shape[1]:
        raise ValueError(f"win matrix must be square (K, K), got shape {wins.shape}")
    if not np.all(np.isfinite(wins)) or np.any(wins < 0):
        raise ValueError("win matrix must hold finite counts >= 0")
    wins = wins.copy()
    np.fill_diagonal(wins, 0.0)
    return wins


def win_rates(wins: np.ndarray) -> np.ndarray:
    """(K, K) win matrix -> (K,) share of comparisons each item won (ties count half); NaN without comparisons."""
    wins = _check_win_matrix(wins)
    games = wins.sum(axis=1) + wins.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(games > 0, wins.sum(axis=1) / np.where(games > 0, games, 1.0), np.nan)


def bradley_terry(wins: np.ndarray, prior_games: float = BT_PRIOR_GAMES, tol: float = 1e-10,
                  max_iter: int = 10_000) -> np.ndarray:
    """(K, K) win matrix -> (K,) Bradley-Terry log-strengths, mean zero.

    P(i beats j) = p_i / (p_i + p_j) with p = exp(score). Fitted by the MM algorithm (Zermelo's iteration,
    Hunter 2004, eq. 3): p_i <- W_i / sum_j N_ij / (p_i + p_j), with W_i the wins of i (ties half) and
    N_ij the comparisons of i and j, after adding `prior_games` pseudo-games (half wins each way) per pair.
    """
    wins = _check_win_matrix(wins)
    k = wins.shape[0]
    if k == 0:
        return np.zeros(0)
    if prior_games < 0:
        raise ValueError(f"prior_games must be >= 0, got {prior_games}")
    off_diagonal = 1.0 - np.eye(k)
    wins = wins + 0.5 * prior_games * off_diagonal
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    strength = np.ones(k)
    for _ in range(max_iter):
        denominator = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = np.where(denominator > 0, total_wins / np.where(denominator > 0, denominator, 1.0), 1.0)
        new = np.maximum(new, 1e-300)
        new /= np.exp(np.mean(np.log(new)))  # the scale is free; fix the geometric mean to 1
        if np.max(np.abs(np.log(new) - np.log(strength))) < tol:
            strength = new
            break
        strength = new
    scores = np.log(strength)
    return scores - scores.mean()


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(B, K) bootstrap replicates -> per column the (lower, upper) percentile interval, NaNs ignored."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    samples = np.asarray(samples, dtype=np.float64)
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN bounds, not a warning
        return np.nanpercentile(samples, tail, axis=0), np.nanpercentile(samples, 100 - tail, axis=0)


def bootstrap_win_matrices(unit_wins: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(U, K, K) per-unit win matrices (a unit: one vote or one participant) -> (B, K, K) resampled totals.

    Each replicate draws U units with replacement (multinomial counts), so votes of one participant stay
    together when units are participants (a cluster bootstrap).
    """
    unit_wins = np.asarray(unit_wins, dtype=np.float64)
    if unit_wins.ndim != 3:
        raise ValueError(f"unit win matrices must have shape (U, K, K), got {unit_wins.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n_units = unit_wins.shape[0]
    if n_units == 0:
        return np.zeros((n_resamples, *unit_wins.shape[1:]))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_resamples).astype(np.float64)
    return np.tensordot(counts, unit_wins, axes=1)


def bootstrap_statistic(resampled: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                        level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Apply `statistic` ((K, K) -> (K,)) to each of (B, K, K) resampled win matrices; percentile interval."""
    replicates = np.stack([statistic(w) for w in resampled]) if len(resampled) else np.zeros((0, 0))
    return percentile_interval(replicates, level)


def krippendorff_alpha_nominal(ratings: Mapping[Hashable, Mapping[Hashable, Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal data: `ratings[unit][coder] = value`; missing ratings are absent.

    alpha = 1 - D_o / D_e from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's
    alpha-reliability", sec. C): only units with >= 2 values count, each pair of values of a unit adds
    1 / (m_u - 1). Returns None when there is nothing pairable or no variation at all (D_e = 0).
    """
    categories: dict[Hashable, int] = {}
    pairable: list[list[int]] = []
    for coders in ratings.values():
        values = [v for v in coders.values() if v is not None]
        if len(values) >= 2:
            pairable.append([categories.setdefault(v, len(categories)) for v in values])
    if not pairable:
        return None
    k = len(categories)
    coincidence = np.zeros((k, k))
    for values in pairable:
        counts = np.bincount(values, minlength=k).astype(np.float64)
        # ordered pairs of values from different coders: n_c n_k off the diagonal, n_c (n_c - 1) on it
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (len(values) - 1)
    marginals = coincidence.sum(axis=1)
    n = marginals.sum()
    observed = coincidence.sum() - np.trace(coincidence)
    expected = (n * n - (marginals**2).sum()) / (n - 1)
    if expected <= 0:
        return None
    return float(1.0 - observed / expected)


def agreement_rate(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Share of (first, repeat) outcome pairs that agree; None for no pairs."""
    if not pairs:
        return None
    return sum(a == b for a, b in pairs) / len(pairs)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input order: the i-th smallest p times (m - i + 1),
    made monotone, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted
