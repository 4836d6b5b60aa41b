"""The pure plan of what each participant of a study sees: Latin-square pairs, galleries, repeats, checks.

`assign_items` gives a participant's ordered items for a `StudyDefinition` (`feedback.studies.study`):
`PlannedItem`s for a pairwise study, `GalleryItem`s for a gallery study; `side_balance` and
`position_balance` count how evenly conditions fall on sides and positions. Nothing here touches the
database or torch.

Pairwise studies (`candidates_per_round` 2): an item shows one stimulus restored by two conditions, left and
right. Assignment is a Latin square: participant i sees stimulus j with condition pair (i + j) mod P, so every
P consecutive participants cover every (stimulus, pair) cell exactly once. Sides are counterbalanced (half of
each participant's items swapped, shuffled), a share of items is repeated later with sides swapped
(test-retest), and attention checks show a clean image against a clearly degraded control (the expected
answer is the clean side).

Gallery studies (`candidates_per_round` K in 3..6, at most the number of conditions): an item shows one
stimulus restored by K conditions in a row of positions 1..K; the participant picks the best (required) and
may mark the worst. The same scheme, one level up:
  - subsets: S = the K-subsets of the conditions (in definition order); participant i sees stimulus j with
    subset (i + j) mod |S|, so every |S| consecutive participants cover every (stimulus, subset) cell once;
  - positions: each (stimulus, subset) cell has a base order, a seeded random permutation of its subset (the
    study seed; so orders differ from item to item), shown rotated left by r = (i // |S| + j) mod K; the K
    participants who see a cell in K|S| consecutive participants see its K rotations, so every condition of
    the subset takes every position exactly once (a cyclic Latin square over positions);
  - with more items than stimuli the stimuli are reused in blocks, each block shifted by one subset and one
    rotation (as the pairwise plan shifts by one pair);
  - repeats show the same subset again later, rotated by a seeded 1..K-1 (never the same order);
  - attention checks show the clean image among K-1 copies of the degraded control at a seeded random
    position; the expected answer is that position ('1'..'K').
Items are shuffled per participant (seeded), as in the pairwise plan. A gallery vote counts as the preference
pairs it implies: the best beats each other shown image, and each other shown image beats the marked worst
(`feedback.studies.study.gallery_pairs`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from feedback.record.errors import InputError
from feedback.studies.study import ATTENTION_CLEAN, ATTENTION_CONTROL, StudyDefinition, _is_int


# -------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class PlannedItem:
    """One item a participant judges: a stimulus shown by two conditions, `left` on the left.

    For a repeat, `repeat_of` is the position of the first showing (sides swapped); for an attention
    check, the conditions are ATTENTION_CLEAN / ATTENTION_CONTROL and `expected` names the clean side.
    """

    position: int
    stimulus: int
    left: str
    right: str
    is_repeat: bool = False
    repeat_of: int | None = None
    is_attention_check: bool = False
    expected: str | None = None  # 'left' | 'right' for attention checks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _main_slots(study: StudyDefinition, participant_index: int) -> list[tuple[int, int]]:
    """(stimulus j, block) of each main item of a participant, in plan order: with more items than stimuli the
    stimuli are reused in blocks (each block shifts the Latin square by one cell)."""
    if not _is_int(participant_index) or participant_index < 0:
        raise InputError(f"participant_index must be an integer >= 0, got {participant_index!r}")
    n_stimuli = len(study.stimuli)
    start = (participant_index * study.n_main_items) % n_stimuli if study.items_per_participant else 0
    return [((start + t) % n_stimuli, (start + t) // n_stimuli) for t in range(study.n_main_items)]


def _first_showings(sequence: list[dict[str, Any]]) -> dict[int, int]:
    """Main item index -> its final position in `sequence` (to link repeats to their first showing); repeats
    carry 'repeat_of_main', attention checks 'expected'."""
    first: dict[int, int] = {}
    for position, entry in enumerate(sequence):
        if "repeat_of_main" not in entry and "expected" not in entry:
            first[len(first)] = position
    return first


def latin_square_cells(study: StudyDefinition, participant_index: int) -> list[tuple[int, tuple[str, str]]]:
    """(stimulus, condition pair as shown left, right) of a participant's main items: stimulus j gets pair
    (i + j) mod P, with sides swapped when (i // P + j) is odd, so 2P consecutive participants show every
    (stimulus, pair) cell once in each left/right order.

    With more items than stimuli, the stimuli are reused in blocks, each block shifted by one pair."""
    pairs = study.condition_pairs
    cells = []
    for j, block in _main_slots(study, participant_index):
        a, b = pairs[(participant_index + j + block) % len(pairs)]
        swap = (participant_index // len(pairs) + j + block) % 2 == 1
        cells.append((j, (b, a) if swap else (a, b)))
    return cells


def assign_items(study: StudyDefinition, participant_index: int, seed: int) -> list[PlannedItem] | list[GalleryItem]:
    """The ordered items of participant `participant_index`: Latin-square main items (sides counterbalanced
    across participants) in a seeded shuffled order, swapped repeats placed after their first showing, and attention
    checks. For a gallery study (candidates_per_round > 2): `assign_gallery_items`."""
    if study.is_gallery:
        return assign_gallery_items(study, participant_index, seed)
    rng = random.Random(f"{seed}:{participant_index}")
    main = latin_square_cells(study, participant_index)
    rng.shuffle(main)
    sequence: list[dict[str, Any]] = [{"stimulus": j, "left": left, "right": right} for j, (left, right) in main]
    for original in sorted(rng.sample(range(len(main)), study.n_repeats), reverse=True):
        j, (left, right) = main[original]
        slot = rng.randint(original + 1, len(sequence))  # strictly after its first showing
        sequence.insert(slot, {"stimulus": j, "left": right, "right": left, "repeat_of_main": original})
    for _ in range(study.attention_checks):
        clean_left = rng.random() < 0.5
        sequence.insert(rng.randint(1 if sequence else 0, len(sequence)), {
            "stimulus": rng.randrange(len(study.stimuli)),
            "left": ATTENTION_CLEAN if clean_left else ATTENTION_CONTROL,
            "right": ATTENTION_CONTROL if clean_left else ATTENTION_CLEAN,
            "expected": "left" if clean_left else "right"})
    first_position = _first_showings(sequence)
    items = []
    for position, entry in enumerate(sequence):
        is_repeat = "repeat_of_main" in entry
        items.append(PlannedItem(
            position=position, stimulus=entry["stimulus"], left=entry["left"], right=entry["right"],
            is_repeat=is_repeat, repeat_of=first_position[entry["repeat_of_main"]] if is_repeat else None,
            is_attention_check="expected" in entry, expected=entry.get("expected")))
    return items


# -------------------------------------------------------------------------------------------- galleries
@dataclass(frozen=True)
class GalleryItem:
    """One gallery item: a stimulus shown by K conditions, `shown[p]` at position p + 1.

    For a repeat, `repeat_of` is the position of the first showing (same conditions, another order); for an
    attention check, `shown` holds ATTENTION_CLEAN once among ATTENTION_CONTROLs and `expected` is the clean
    image's position ('1'..'K')."""

    position: int
    stimulus: int
    shown: tuple[str, ...]
    is_repeat: bool = False
    repeat_of: int | None = None
    is_attention_check: bool = False
    expected: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shown": list(self.shown)}


def _rotated(order: tuple[str, ...], r: int) -> tuple[str, ...]:
    r %= len(order)
    return order[r:] + order[:r]


def gallery_cells(study: StudyDefinition, participant_index: int) -> list[tuple[int, tuple[str, ...]]]:
    """(stimulus, conditions in shown order) of a participant's main gallery items (module docstring: subset
    (i + j + block) mod |S|, base order rotated by (i // |S| + j + block) mod K)."""
    subsets = study.condition_subsets
    cells = []
    for j, block in _main_slots(study, participant_index):
        s = (participant_index + j + block) % len(subsets)
        base = list(subsets[s])
        random.Random(f"{study.seed}:gallery:{j}:{s}").shuffle(base)  # the cell's base order, same for everyone
        cells.append((j, _rotated(tuple(base), participant_index // len(subsets) + j + block)))
    return cells


def assign_gallery_items(study: StudyDefinition, participant_index: int, seed: int) -> list[GalleryItem]:
    """The ordered gallery items of participant `participant_index`: counterbalanced main items in a seeded
    shuffled order, repeats (same conditions, rotated) after their first showing, and attention checks."""
    rng = random.Random(f"{seed}:{participant_index}:gallery")
    k = study.candidates_per_round
    main = gallery_cells(study, participant_index)
    rng.shuffle(main)
    sequence: list[dict[str, Any]] = [{"stimulus": j, "shown": shown} for j, shown in main]
    for original in sorted(rng.sample(range(len(main)), study.n_repeats), reverse=True):
        j, shown = main[original]
        slot = rng.randint(original + 1, len(sequence))  # strictly after its first showing
        sequence.insert(slot, {"stimulus": j, "shown": _rotated(shown, rng.randrange(1, k)),
                               "repeat_of_main": original})
    for _ in range(study.attention_checks):
        clean = rng.randrange(k)
        shown = tuple(ATTENTION_CLEAN if p == clean else ATTENTION_CONTROL for p in range(k))
        sequence.insert(rng.randint(1 if sequence else 0, len(sequence)), {
            "stimulus": rng.randrange(len(study.stimuli)), "shown": shown, "expected": str(clean + 1)})
    first_position = _first_showings(sequence)
    return [GalleryItem(position=position, stimulus=entry["stimulus"], shown=tuple(entry["shown"]),
                        is_repeat="repeat_of_main" in entry,
                        repeat_of=first_position[entry["repeat_of_main"]] if "repeat_of_main" in entry else None,
                        is_attention_check="expected" in entry, expected=entry.get("expected"))
            for position, entry in enumerate(sequence)]


def position_balance(items: Sequence[GalleryItem]) -> dict[tuple[str, int], int]:
    """How often each (condition, position 1..K) occurs over main gallery items (for checks and reports)."""
    counts: dict[tuple[str, int], int] = {}
    for item in items:
        if not item.is_repeat and not item.is_attention_check:
            for p, condition in enumerate(item.shown, start=1):
                counts[condition, p] = counts.get((condition, p), 0) + 1
    return counts


def side_balance(items: list[PlannedItem]) -> dict[str, int]:
    """How often each condition appears on the left, over main items (for checks and reports)."""
    counts: dict[str, int] = {}
    for item in items:
        if not item.is_repeat and not item.is_attention_check:
            counts[item.left] = counts.get(item.left, 0) + 1
    return counts
