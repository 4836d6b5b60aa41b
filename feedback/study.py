"""User studies: the typed study definition, and the pure plan of what each participant sees.

A study compares *conditions* (restoration systems: 'nlm', 'sipl', 'ttpo-auto:sipl', ...) on *stimuli*
(each image of the set under each degradation). A participant judges items; an item shows one stimulus
restored by two conditions, left and right. Assignment is a Latin square: participant i sees stimulus j
with condition pair (i + j) mod P, so every P consecutive participants cover every (stimulus, pair) cell
exactly once. Sides are counterbalanced (half of each participant's items swapped, shuffled), a share of
items is repeated later with sides swapped (test-retest), and attention checks show a clean image against
a clearly degraded control (the expected answer is the clean side).

    study = load_study("studies/pilot.yaml")
    items = assign_items(study, participant_index=3, seed=study.seed)

Nothing here touches the database or torch; `feedback.study_service` records and computes.
"""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import MISSING, asdict, dataclass, fields
from itertools import combinations
from pathlib import Path
from typing import Any

from feedback.errors import InputError

#: Degradation applied to make the attention-check control (clearly worse than any condition's output).
ATTENTION_CONTROL_SPEC = "blur:3+noise:60"
#: Method names recorded for the two images of an attention check.
ATTENTION_CLEAN, ATTENTION_CONTROL = "attention-clean", "attention-control"
#: Completion codes: unambiguous upper-case letters and digits (no 0/O, 1/I).
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
MAX_ITEMS = 500


@dataclass(frozen=True)
class StudyDefinition:
    """A pairwise user study; the fields are the keys of the YAML/JSON file.

    images: file paths (relative to the definition file) or image ids (sha256 of a stored PNG); when
    `degradations` lists specs, the images are the clean ground truth and each spec makes one stimulus
    per image; with no degradations the images are the degraded inputs themselves (no ground truth).
    conditions: at least two systems to compare (backbone names, or 'ttpo-auto:<backbone>').
    items_per_participant: main items per participant (repeats and attention checks come on top).
    """

    name: str
    images: tuple[str, ...]
    conditions: tuple[str, ...]
    consent_text: str
    consent_version: str
    instructions: str = "Two restorations of the same image are shown. Pick the one that looks better."
    degradations: tuple[str, ...] = ()
    items_per_participant: int = 0  # 0: one item per stimulus
    candidates_per_round: int = 2
    repeat_share: float = 0.2
    attention_checks: int = 1
    seed: int = 0
    size: int | None = None  # resize images to this side (px) before degrading; None keeps them

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and 0 < len(self.name.strip()) <= 200, "name must be text (1-200 chars)")
        _check(len(self.images) >= 1 and all(isinstance(i, str) and i for i in self.images),
               "images must be a non-empty list of file paths or image ids")
        _check(len(self.conditions) >= 2 and all(isinstance(c, str) and 0 < len(c) <= 64 for c in self.conditions),
               "conditions must list at least two condition names (at most 64 characters each)")
        _check(len(set(self.conditions)) == len(self.conditions), "conditions must not repeat a name")
        _check(not set(self.conditions) & {ATTENTION_CLEAN, ATTENTION_CONTROL},
               f"condition names {ATTENTION_CLEAN!r} and {ATTENTION_CONTROL!r} are reserved for attention checks")
        _check(isinstance(self.consent_text, str) and self.consent_text.strip() != "", "consent_text must be text")
        _check(isinstance(self.consent_version, str) and 0 < len(self.consent_version) <= 32,
               "consent_version must be text of 1-32 characters (e.g. 'v1')")
        _check(all(isinstance(d, str) and d.strip() for d in self.degradations),
               "degradations must be a list of degradation specs like 'noise:25' or 'blur:2+jpeg:30'")
        _check(self.candidates_per_round == 2, "candidates_per_round must be 2 (pairwise studies only, for now)")
        _check(_is_int(self.items_per_participant) and 0 <= self.items_per_participant <= MAX_ITEMS,
               f"items_per_participant must be an integer in [0, {MAX_ITEMS}] (0: one per stimulus)")
        _check(isinstance(self.repeat_share, (int, float)) and not isinstance(self.repeat_share, bool)
               and 0 <= self.repeat_share <= 1, "repeat_share must be a number in [0, 1]")
        _check(_is_int(self.attention_checks) and 0 <= self.attention_checks <= 50,
               "attention_checks must be an integer in [0, 50]")
        _check(_is_int(self.seed) and 0 <= self.seed < 2**31, "seed must be an integer in [0, 2^31)")
        _check(self.size is None or (_is_int(self.size) and 16 <= self.size <= 2048),
               "size must be null or an integer in [16, 2048]")

    @property
    def stimuli(self) -> list[tuple[int, str]]:
        """(image index, degradation spec) of every stimulus; spec '' when the images are already degraded."""
        specs = self.degradations or ("",)
        return [(i, spec) for i in range(len(self.images)) for spec in specs]

    @property
    def condition_pairs(self) -> list[tuple[str, str]]:
        """Every unordered pair of conditions, in definition order."""
        return list(combinations(self.conditions, 2))

    @property
    def n_main_items(self) -> int:
        return self.items_per_participant or len(self.stimuli)

    @property
    def n_repeats(self) -> int:
        return round(self.repeat_share * self.n_main_items)

    @property
    def n_items(self) -> int:
        """Items each participant judges: main items, repeats and attention checks."""
        return self.n_main_items + self.n_repeats + self.attention_checks

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(f"study definition: {message}")


def expected_fields() -> str:
    """The fields of a study definition, required first (for error messages)."""
    required = [f.name for f in fields(StudyDefinition) if f.default is MISSING and f.default_factory is MISSING]
    optional = [f.name for f in fields(StudyDefinition) if f.name not in required]
    return f"required: {', '.join(required)}; optional: {', '.join(optional)}"


def study_from_dict(data: Any, base_dir: str | Path | None = None) -> StudyDefinition:
    """A checked definition from a parsed YAML/JSON mapping; relative image paths resolved against `base_dir`."""
    if not isinstance(data, dict):
        raise InputError(f"a study definition must be a mapping of fields ({expected_fields()}), "
                         f"got {type(data).__name__}")
    known = {f.name for f in fields(StudyDefinition)}
    if unknown := sorted(set(data) - known):
        raise InputError(f"study definition: unknown field(s) {', '.join(map(str, unknown))}; {expected_fields()}")
    required = {f.name for f in fields(StudyDefinition) if f.default is MISSING and f.default_factory is MISSING}
    if missing := sorted(required - set(data)):
        raise InputError(f"study definition: missing field(s) {', '.join(missing)}; {expected_fields()}")
    values = dict(data)
    for name in ("images", "conditions", "degradations"):
        if name in values:
            value = values[name]
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise InputError(f"study definition: {name} must be a list, got {type(value).__name__}")
            values[name] = tuple(value)
    if base_dir is not None:
        values["images"] = tuple(_resolve_image(i, Path(base_dir)) for i in values["images"])
    if isinstance(values.get("consent_version"), (int, float)) and not isinstance(values["consent_version"], bool):
        values["consent_version"] = str(values["consent_version"])
    return StudyDefinition(**values)


def _resolve_image(entry: Any, base_dir: Path) -> Any:
    if not isinstance(entry, str) or is_image_id_text(entry):
        return entry
    path = Path(entry)
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def is_image_id_text(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def load_study(path: str | Path) -> StudyDefinition:
    """Read a study definition from a .yaml/.yml or .json file (see `StudyDefinition` for the fields)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no study definition file at {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"study definition {path.name} is not valid JSON: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"study definition {path.name} is not valid YAML: {exc}") from None
    else:
        raise InputError(f"study definition {path.name}: use a .yaml, .yml or .json file")
    return study_from_dict(data, base_dir=path.parent)


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


def latin_square_cells(study: StudyDefinition, participant_index: int) -> list[tuple[int, tuple[str, str]]]:
    """(stimulus, condition pair as shown left, right) of a participant's main items: stimulus j gets pair
    (i + j) mod P, with sides swapped when (i // P + j) is odd, so 2P consecutive participants show every
    (stimulus, pair) cell once in each left/right order.

    With more items than stimuli, the stimuli are reused in blocks, each block shifted by one pair."""
    if not _is_int(participant_index) or participant_index < 0:
        raise InputError(f"participant_index must be an integer >= 0, got {participant_index!r}")
    pairs, n_stimuli = study.condition_pairs, len(study.stimuli)
    start = (participant_index * study.n_main_items) % n_stimuli if study.items_per_participant else 0
    cells = []
    for t in range(study.n_main_items):
        j = (start + t) % n_stimuli
        block = (start + t) // n_stimuli
        a, b = pairs[(participant_index + j + block) % len(pairs)]
        swap = (participant_index // len(pairs) + j + block) % 2 == 1
        cells.append((j, (b, a) if swap else (a, b)))
    return cells


def assign_items(study: StudyDefinition, participant_index: int, seed: int) -> list[PlannedItem]:
    """The ordered items of participant `participant_index`: Latin-square main items (sides counterbalanced
    across participants) in a seeded shuffled order, swapped repeats placed after their first showing, and attention checks."""
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
    # Main item index -> final position, to link repeats to their first showing.
    first_position: dict[int, int] = {}
    main_seen = 0
    for position, entry in enumerate(sequence):
        if "repeat_of_main" not in entry and "expected" not in entry:
            first_position[main_seen] = position
            main_seen += 1
    items = []
    for position, entry in enumerate(sequence):
        is_repeat = "repeat_of_main" in entry
        items.append(PlannedItem(
            position=position, stimulus=entry["stimulus"], left=entry["left"], right=entry["right"],
            is_repeat=is_repeat, repeat_of=first_position[entry["repeat_of_main"]] if is_repeat else None,
            is_attention_check="expected" in entry, expected=entry.get("expected")))
    return items


def new_completion_code(length: int = CODE_LENGTH) -> str:
    """A random completion code like 'K7QX3M9RTA' (log2(32) * 10 = 50 bits)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


def normalise_code(code: Any) -> str:
    """A typed completion code, upper-cased, spaces and dashes removed; InputError when malformed."""
    if not isinstance(code, str):
        raise InputError("the completion code must be text")
    cleaned = code.replace("-", "").replace(" ", "").upper()
    if not cleaned or len(cleaned) > 64 or any(c not in CODE_ALPHABET for c in cleaned):
        raise InputError(f"a completion code has {CODE_LENGTH} characters from {CODE_ALPHABET}")
    return cleaned


def attention_passed(expected: str | None, choice: str | None) -> bool | None:
    """Whether an attention check was answered as expected (None for other items or no answer yet)."""
    if expected is None or choice is None:
        return None
    return choice == expected


def side_balance(items: list[PlannedItem]) -> dict[str, int]:
    """How often each condition appears on the left, over main items (for checks and reports)."""
    counts: dict[str, int] = {}
    for item in items:
        if not item.is_repeat and not item.is_attention_check:
            counts[item.left] = counts.get(item.left, 0) + 1
    return counts
