"""User studies: the typed study definition, its conditions, and how a vote is read back.

A study compares *conditions* (restoration systems: 'nlm', 'sipl', 'ttpo-auto:sipl', ...) on *stimuli*
(each image of the set under each degradation). A participant judges items. Condition names follow
CONDITION_SYNTAX (`parse_condition`):
  '<backbone>'                                      the backbone's restoration alone;
  'ttpo-auto:<backbone>[;prior=<name>][;selector=<metric>+<metric>...]'
                                                    one automatic TTPO round: restore, diffusion candidates under
                                                    the prior, the metric selector picks, reward-guided refinement;
  'ttpo-human:<backbone>[;prior=<name>]'            the same round with the choice made by the people of a guide
                                                    study (`guide_study`; `feedback.studies.guide`).
Parameters come after the backbone, each as ';key=value', in any order, each at most once; left out, the prior is
the process's 'default' and the selector its default metrics.

How each participant's items are planned (Latin squares, galleries, repeats, attention checks) is
`feedback.studies.plan`; this module holds what the plan reads and how a vote is read back (`gallery_pairs`,
completion codes, `attention_passed`):

    study = load_study("studies/pilot.yaml")
    items = assign_items(study, participant_index=3, seed=study.seed)  # feedback.studies.plan

Nothing here touches the database or torch; `feedback.studies.service` records and computes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from itertools import combinations
from pathlib import Path
from typing import Any

from feedback.record.errors import InputError

#: Degradation applied to make the attention-check control (clearly worse than any condition's output).
ATTENTION_CONTROL_SPEC = "blur:3+noise:60"
#: Method names recorded for the two images of an attention check.
ATTENTION_CLEAN, ATTENTION_CONTROL = "attention-clean", "attention-control"
#: Completion codes: unambiguous upper-case letters and digits (no 0/O, 1/I).
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
MAX_ITEMS = 500
#: At most this many images in one gallery item.
MAX_GALLERY = 6
PAIRWISE_INSTRUCTIONS = "Two restorations of the same image are shown. Pick the one that looks better."
TTPO_AUTO, TTPO_HUMAN = "ttpo-auto", "ttpo-human"
STUDY_KINDS = ("compare", "guide")
MAX_GUIDE_VOTES = 10_000
CONDITION_SYNTAX = ("'<backbone>', 'ttpo-auto:<backbone>[;prior=<name>][;selector=<metric>+<metric>...]' or "
                    "'ttpo-human:<backbone>[;prior=<name>]'")
MAX_CONDITION_CHARS = 64  # the width of the condition/method columns of the record
#: How main items are chosen: 'latin' (the fixed plan above) or 'adaptive' (`feedback.studies.sampling`).
SAMPLINGS = ("latin", "adaptive")
#: Offline metrics every stimulus is scored by at preparation (`metrics` adds cached pyiqa metrics).
STIMULUS_METRICS = ("piqe", "entropy")
MAX_STUDY_METRICS = 4
MAX_URL_CHARS = 500
GALLERY_INSTRUCTIONS = ("Several restorations of the same image are shown. Pick the one that looks best "
                        "(keys 1-{k}); you may also mark the one that looks worst (Shift + its key).")


@dataclass(frozen=True)
class StudyDefinition:
    """A pairwise or gallery user study; the fields are the keys of the YAML/JSON file.

    images: file paths (relative to the definition file) or image ids (sha256 of a stored PNG); when
    `degradations` lists specs, the images are the clean ground truth and each spec makes one stimulus
    per image; with no degradations the images are the degraded inputs themselves (no ground truth).
    conditions: at least two systems to compare, each named as in CONDITION_SYNTAX (at most 64 characters):
    a backbone ('nlm', 'sipl'), or an automatic TTPO round 'ttpo-auto:<backbone>' with optional parameters
    ';prior=<name>' (a prior the server offers, default 'default') and ';selector=<metric>+...' (offline
    no-reference metrics, default the server's), e.g. 'ttpo-auto:sipl;prior=default;selector=piqe+entropy'.
    items_per_participant: main items per participant (repeats and attention checks come on top).
    candidates_per_round: images per item: 2 (pairwise, left/right) or K in 3..min(6, number of conditions)
    (a gallery; see the module docstring). A gallery study left with the pairwise default instructions gets
    the gallery instructions.
    kind: 'compare' (the default: items compare the conditions) or 'guide': a guide study collects choices among
    a stimulus's TTPO candidates for 'ttpo-human:' conditions of other studies. Its one condition
    'ttpo-human:<backbone>[;prior=<name>]' names the backbone that restores and the prior that makes the
    candidates; its items are galleries (candidates_per_round K in 3..6) of the restored image and K-1 diffusion
    candidates (seeds and strengths recorded), shown as conditions 'restored', 'c0'..'c<K-2>', with the same
    Latin square over positions, repeats, attention checks and completion codes as compare galleries.
    sampling: 'latin' (the default: the Latin-square plan) or 'adaptive': each main item is the condition pair
    with the highest expected information gain under the Bradley-Terry posterior of the study's votes so far
    (`feedback.studies.sampling`); pairwise compare studies only. Repeats and attention checks are planned as usual.
    metrics: cached pyiqa metrics (no-reference, at most 4) scored on every stimulus at preparation besides
    STIMULUS_METRICS (piqe, entropy); `feedback.analysis.report.metric_agreement` compares them with the people.
    completion_url: where the page sends a participant who finished, the completion code appended (or put in
    place of '{code}'), e.g. 'https://app.prolific.com/submissions/complete?cc='. screenout_url: where a
    participant who fails an attention check is sent (the participant is then screened out: no more items).
    guide_study: the id of an active guide study; required by (and only with) 'ttpo-human:' conditions, which
    must name its backbone and prior. It must have this study's images, degradations, seed and size, and at
    least `min_guide_votes` (default 1) counted votes per stimulus (`feedback.studies.guide`). In a study with a
    guide, every TTPO condition uses the guide's candidate settings, so 'ttpo-auto:<backbone>' and
    'ttpo-human:<backbone>' differ only in who chose.
    """

    name: str
    images: tuple[str, ...]
    conditions: tuple[str, ...]
    consent_text: str
    consent_version: str
    instructions: str = PAIRWISE_INSTRUCTIONS
    degradations: tuple[str, ...] = ()
    items_per_participant: int = 0  # 0: one item per stimulus
    candidates_per_round: int = 2
    repeat_share: float = 0.2
    attention_checks: int = 1
    seed: int = 0
    size: int | None = None  # resize images to this side (px) before degrading; None keeps them
    kind: str = "compare"
    guide_study: str | None = None
    min_guide_votes: int = 1
    sampling: str = "latin"
    metrics: tuple[str, ...] = ()
    completion_url: str | None = None
    screenout_url: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and 0 < len(self.name.strip()) <= 200, "name must be text (1-200 chars)")
        _check(len(self.images) >= 1 and all(isinstance(i, str) and i for i in self.images),
               "images must be a non-empty list of file paths or image ids")
        _check(self.kind in STUDY_KINDS, f"kind must be one of {', '.join(STUDY_KINDS)}, got {str(self.kind)[:20]!r}")
        _check(all(isinstance(c, str) and c for c in self.conditions), f"conditions must be names ({CONDITION_SYNTAX})")
        parsed = [parse_condition(condition) for condition in self.conditions]  # InputError naming the syntax
        human = [c.name for c in parsed if c.kind == TTPO_HUMAN]
        if self.kind == "guide":
            _check(len(parsed) == 1 and parsed[0].kind == TTPO_HUMAN,
                   "a guide study has exactly one condition, 'ttpo-human:<backbone>[;prior=<name>]' (the system whose "
                   f"candidates people choose among), got {list(self.conditions)}")
            _check(self.guide_study is None, "a guide study takes no guide_study")
            _check(_is_int(self.candidates_per_round) and 3 <= self.candidates_per_round <= MAX_GALLERY,
                   f"a guide study shows galleries: candidates_per_round must be an integer in [3, {MAX_GALLERY}] "
                   "(the restored image and K-1 diffusion candidates)")
        else:
            _check(len(self.conditions) >= 2, f"conditions must list at least two condition names ({CONDITION_SYNTAX})")
            _check(self.guide_study is None or (isinstance(self.guide_study, str) and 0 < len(self.guide_study) <= 64),
                   "guide_study must be the id of a guide study")
            _check(not human or self.guide_study is not None,
                   f"condition(s) {', '.join(map(repr, human))} need guide_study: the id of a guide study (kind: "
                   "guide) whose participants chose among the candidates")
            _check(human or self.guide_study is None,
                   "guide_study is used by 'ttpo-human:<backbone>' conditions only; add one or leave guide_study out")
        _check(_is_int(self.min_guide_votes) and 1 <= self.min_guide_votes <= MAX_GUIDE_VOTES,
               f"min_guide_votes must be an integer in [1, {MAX_GUIDE_VOTES}]")
        _check(len(set(self.conditions)) == len(self.conditions), "conditions must not repeat a name")
        _check(not set(self.conditions) & {ATTENTION_CLEAN, ATTENTION_CONTROL},
               f"condition names {ATTENTION_CLEAN!r} and {ATTENTION_CONTROL!r} are reserved for attention checks")
        _check(isinstance(self.consent_text, str) and self.consent_text.strip() != "", "consent_text must be text")
        _check(isinstance(self.consent_version, str) and 0 < len(self.consent_version) <= 32,
               "consent_version must be text of 1-32 characters (e.g. 'v1')")
        _check(all(isinstance(d, str) and d.strip() for d in self.degradations),
               "degradations must be a list of degradation specs like 'noise:25' or 'blur:2+jpeg:30'")
        most = min(MAX_GALLERY, len(self.plan_conditions))
        _check(_is_int(self.candidates_per_round) and 2 <= self.candidates_per_round <= most,
               f"candidates_per_round must be an integer in [2, {most}] (2: pairwise; more: a gallery of that many "
               f"conditions; at most {MAX_GALLERY} and at most the number of conditions)")
        if self.is_gallery and self.instructions == PAIRWISE_INSTRUCTIONS:
            object.__setattr__(self, "instructions", GALLERY_INSTRUCTIONS.format(k=self.candidates_per_round))
        _check(_is_int(self.items_per_participant) and 0 <= self.items_per_participant <= MAX_ITEMS,
               f"items_per_participant must be an integer in [0, {MAX_ITEMS}] (0: one per stimulus)")
        _check(isinstance(self.repeat_share, (int, float)) and not isinstance(self.repeat_share, bool)
               and 0 <= self.repeat_share <= 1, "repeat_share must be a number in [0, 1]")
        _check(_is_int(self.attention_checks) and 0 <= self.attention_checks <= 50,
               "attention_checks must be an integer in [0, 50]")
        _check(_is_int(self.seed) and 0 <= self.seed < 2**31, "seed must be an integer in [0, 2^31)")
        _check(self.size is None or (_is_int(self.size) and 16 <= self.size <= 2048),
               "size must be null or an integer in [16, 2048]")
        _check(self.sampling in SAMPLINGS, f"sampling must be one of {', '.join(SAMPLINGS)}, "
                                           f"got {str(self.sampling)[:20]!r}")
        _check(self.sampling == "latin" or (self.kind == "compare" and not self.is_gallery),
               "sampling 'adaptive' is offered for pairwise compare studies (candidates_per_round 2) only")
        _check(len(self.metrics) <= MAX_STUDY_METRICS and all(isinstance(m, str) and 0 < len(m) <= 40
                                                              for m in self.metrics),
               f"metrics must be a list of at most {MAX_STUDY_METRICS} pyiqa metric names (besides "
               f"{', '.join(STIMULUS_METRICS)}, which every study gets)")
        for name in ("completion_url", "screenout_url"):
            url = getattr(self, name)
            _check(url is None or (isinstance(url, str) and url.startswith(("https://", "http://"))
                                   and len(url) <= MAX_URL_CHARS and not any(c.isspace() for c in url)),
                   f"{name} must be null or an http(s) URL of at most {MAX_URL_CHARS} characters without spaces")

    @property
    def stimuli(self) -> list[tuple[int, str]]:
        """(image index, degradation spec) of every stimulus; spec '' when the images are already degraded."""
        specs = self.degradations or ("",)
        return [(i, spec) for i in range(len(self.images)) for spec in specs]

    @property
    def stimulus_metrics(self) -> tuple[str, ...]:
        """Every metric the stimuli are scored by: STIMULUS_METRICS, then the study's own (lower-cased)."""
        return tuple(dict.fromkeys((*STIMULUS_METRICS, *(m.strip().lower() for m in self.metrics))))

    @property
    def is_gallery(self) -> bool:
        return self.candidates_per_round > 2

    @property
    def plan_conditions(self) -> tuple[str, ...]:
        """What items show: the conditions, or for a guide study its candidates 'restored', 'c0'..'c<K-2>'."""
        if self.kind == "guide":
            return guide_labels(self.candidates_per_round)
        return self.conditions

    @property
    def condition_subsets(self) -> list[tuple[str, ...]]:
        """Every K-subset of the shown conditions (K = candidates_per_round), in definition order."""
        return list(combinations(self.plan_conditions, self.candidates_per_round))

    @property
    def condition_pairs(self) -> list[tuple[str, str]]:
        """Every unordered pair of shown conditions, in definition order."""
        return list(combinations(self.plan_conditions, 2))

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


# -------------------------------------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Condition:
    """A parsed condition name (CONDITION_SYNTAX): kind 'backbone', 'ttpo-auto' or 'ttpo-human'; `prior` and
    `selector` None where the name leaves them to the process defaults (names are checked by the worker)."""

    name: str
    kind: str
    backbone: str
    prior: str | None = None
    selector: tuple[str, ...] | None = None

    @property
    def is_ttpo(self) -> bool:
        return self.kind in (TTPO_AUTO, TTPO_HUMAN)


_CONDITION_KEYS = {TTPO_AUTO: ("prior", "selector"), TTPO_HUMAN: ("prior",)}


def parse_condition(name: str) -> Condition:
    """'ttpo-auto:sipl;prior=default;selector=piqe+entropy' -> Condition; InputError naming the syntax."""
    def fail(why: str) -> InputError:
        return InputError(f"condition {name[:80]!r}: {why}; conditions are {CONDITION_SYNTAX}")

    if not isinstance(name, str) or not name.strip():
        raise InputError(f"a condition must be a non-empty name; conditions are {CONDITION_SYNTAX}")
    if len(name) > MAX_CONDITION_CHARS:
        raise fail(f"{len(name)} characters, at most {MAX_CONDITION_CHARS}")
    if name != name.strip() or any(c.isspace() for c in name):
        raise fail("no spaces allowed")
    kind, colon, rest = name.partition(":")
    if not colon:
        if ";" in name or "=" in name:
            raise fail(f"parameters (';prior=...', ';selector=...') apply to {', '.join(_CONDITION_KEYS)} "
                       "conditions only")
        return Condition(name, "backbone", name)
    if kind not in _CONDITION_KEYS:
        raise fail(f"unknown kind {kind[:20]!r} before ':' (allowed: {', '.join(_CONDITION_KEYS)})")
    backbone, *params = rest.split(";")
    if not backbone or "=" in backbone:
        raise fail(f"name the backbone right after '{kind}:'")
    values: dict[str, str] = {}
    for param in params:
        key, eq, value = param.partition("=")
        if key not in _CONDITION_KEYS[kind]:
            raise fail(f"unknown parameter {key[:20]!r} (allowed for {kind}: {', '.join(_CONDITION_KEYS[kind])})")
        if not eq or not value:
            raise fail(f"parameter {key!r} needs a value ('{key}=...')")
        if key in values:
            raise fail(f"parameter {key!r} is given twice")
        values[key] = value
    selector = None
    if "selector" in values:
        selector = tuple(values["selector"].split("+"))
        if not all(selector):
            raise fail("selector metrics are joined by '+', e.g. 'selector=piqe+entropy'")
    return Condition(name, kind, backbone, values.get("prior"), selector)


def guide_labels(k: int) -> tuple[str, ...]:
    """The candidate labels of a guide gallery of K: the restored image and K-1 diffusion candidates."""
    return ("restored", *(f"c{i}" for i in range(k - 1)))


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
    for name in ("images", "conditions", "degradations", "metrics"):
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


def gallery_answer(value: Any, k: int, name: str = "choice") -> str:
    """A gallery position given as '1'..'K' (text or integer) -> its text; InputError otherwise."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if text not in {str(p) for p in range(1, k + 1)}:
        raise InputError(f"{name} must be a gallery position 1..{k}, got {str(value)[:20]!r}")
    return text


def gallery_pairs(shown: Sequence[Any], best: int, worst: int | None = None) -> list[tuple[Any, Any]]:
    """(winner, loser) pairs a gallery vote implies: the best (index into `shown`) beats each other shown
    entry, and each entry other than the best and the worst beats the worst (when one is marked)."""
    if not 0 <= best < len(shown) or (worst is not None and (worst == best or not 0 <= worst < len(shown))):
        raise InputError(f"best and worst must be different positions among the {len(shown)} shown images")
    pairs = [(shown[best], shown[p]) for p in range(len(shown)) if p != best]
    if worst is not None:
        pairs += [(shown[p], shown[worst]) for p in range(len(shown)) if p not in (best, worst)]
    return pairs


def new_completion_code(length: int = CODE_LENGTH) -> str:
    """A random completion code like 'K7QX3M9RTA' (log2(32) * 10 = 50 bits)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


def completion_link(url: str | None, code: str) -> str | None:
    """The completion URL with the code put in place of '{code}', or appended; None without a URL."""
    if url is None:
        return None
    return url.replace("{code}", code) if "{code}" in url else url + code


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
