"""The study plan: definition loading and its errors, Latin-square balance, swapped repeats, attention checks."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from feedback.errors import InputError
from feedback.study import (
    ATTENTION_CLEAN,
    ATTENTION_CONTROL,
    CODE_ALPHABET,
    StudyDefinition,
    assign_items,
    latin_square_cells,
    load_study,
    new_completion_code,
    normalise_code,
    side_balance,
    study_from_dict,
)

BASE = {"name": "pilot", "images": ["a.png", "b.png", "c.png"], "conditions": ["nlm", "bicubic", "sipl"],
        "consent_text": "You agree to ...", "consent_version": "v1", "degradations": ["noise:25", "blur:2"]}


def make(**changes) -> StudyDefinition:
    return study_from_dict({**BASE, **changes})


def test_load_yaml_and_json_resolve_relative_images(tmp_path) -> None:
    (tmp_path / "study.json").write_text(json.dumps(BASE))
    (tmp_path / "study.yaml").write_text(
        "name: pilot\nimages: [a.png, b.png, c.png]\nconditions: [nlm, bicubic, sipl]\n"
        "consent_text: You agree to ...\nconsent_version: 1\ndegradations: ['noise:25', 'blur:2']\n")
    from_json, from_yaml = load_study(tmp_path / "study.json"), load_study(tmp_path / "study.yaml")
    assert from_json.images[0] == str(tmp_path / "a.png")
    assert from_yaml.consent_version == "1"  # a YAML number becomes the version text
    assert from_json.conditions == from_yaml.conditions == ("nlm", "bicubic", "sipl")
    assert len(from_json.stimuli) == 6 and from_json.condition_pairs[0] == ("nlm", "bicubic")


@pytest.mark.parametrize("data, words", [
    ({k: v for k, v in BASE.items() if k != "conditions"}, ["missing", "conditions", "required:"]),
    ({**BASE, "colour": "red"}, ["unknown", "colour", "optional:"]),
    ({**BASE, "conditions": ["nlm"]}, ["at least two"]),
    ({**BASE, "conditions": "nlm,sipl"}, ["must be a list"]),
    ({**BASE, "candidates_per_round": 4}, ["pairwise"]),
    ({**BASE, "repeat_share": 1.5}, ["repeat_share"]),
    ({**BASE, "conditions": ["nlm", "attention-clean"]}, ["reserved"]),
    (["not", "a", "mapping"], ["mapping", "required:"]),
])
def test_bad_definitions_say_what_is_expected(data, words) -> None:
    with pytest.raises(InputError) as err:
        study_from_dict(data)
    for word in words:
        assert word in str(err.value)


def test_bad_files_are_refused_clearly(tmp_path) -> None:
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    (tmp_path / "study.txt").write_text("{}")
    with pytest.raises(InputError, match="not valid YAML"):
        load_study(tmp_path / "broken.yaml")
    with pytest.raises(InputError, match=".yaml, .yml or .json"):
        load_study(tmp_path / "study.txt")
    with pytest.raises(InputError, match="no study definition file"):
        load_study(tmp_path / "missing.json")


def test_latin_square_covers_every_cell_once_per_square() -> None:
    study = make(repeat_share=0, attention_checks=0)
    n_pairs = len(study.condition_pairs)
    unordered = lambda cell: (cell[0], tuple(sorted(cell[1])))
    cells = Counter(unordered(c) for i in range(n_pairs) for c in latin_square_cells(study, i))
    expected = {unordered((j, pair)) for j in range(len(study.stimuli)) for pair in study.condition_pairs}
    assert set(cells) == expected and set(cells.values()) == {1}
    # Two squares show every cell once in each left/right order.
    ordered = Counter(c for i in range(2 * n_pairs) for c in latin_square_cells(study, i))
    assert len(ordered) == 2 * len(expected) and set(ordered.values()) == {1}
    for i in range(n_pairs):  # every participant sees every stimulus once
        assert sorted(j for j, _ in latin_square_cells(study, i)) == list(range(len(study.stimuli)))


def test_more_items_than_stimuli_reuse_stimuli_with_other_pairs() -> None:
    study = make(items_per_participant=12, repeat_share=0, attention_checks=0)
    cells = latin_square_cells(study, 0)
    assert len(cells) == 12 and len(set(cells)) == 12  # no (stimulus, pair) twice


def test_items_are_counterbalanced_shuffled_and_seeded() -> None:
    study = make(repeat_share=0, attention_checks=0)
    items = assign_items(study, 0, seed=1)
    assert [i.position for i in items] == list(range(len(items)))
    swapped = sum((i.left, i.right) not in study.condition_pairs for i in items)
    assert swapped == len(items) // 2  # half of the items show the pair's sides swapped
    assert assign_items(study, 0, seed=1) == items
    assert [i.stimulus for i in assign_items(study, 0, seed=2)] != [i.stimulus for i in items]
    totals = Counter()
    for p in range(2 * len(study.condition_pairs)):
        totals.update(side_balance(assign_items(study, p, seed=0)))
    assert len(set(totals.values())) == 1  # every condition as often on the left


def test_repeats_come_later_with_sides_swapped() -> None:
    study = make(repeat_share=0.5, attention_checks=0)
    items = assign_items(study, 3, seed=0)
    repeats = [i for i in items if i.is_repeat]
    assert len(repeats) == 3 and len(items) == study.n_items == 9
    for rep in repeats:
        first = items[rep.repeat_of]
        assert first.position < rep.position and not first.is_repeat
        assert (first.stimulus, first.left, first.right) == (rep.stimulus, rep.right, rep.left)


def test_attention_checks_are_present_with_a_known_answer() -> None:
    study = make(attention_checks=3, repeat_share=0)
    for p in range(4):
        checks = [i for i in assign_items(study, p, seed=0) if i.is_attention_check]
        assert len(checks) == 3
        for c in checks:
            assert {c.left, c.right} == {ATTENTION_CLEAN, ATTENTION_CONTROL}
            assert getattr(c, c.expected) == ATTENTION_CLEAN
    sides = Counter(c.expected for p in range(20) for c in assign_items(study, p, 0) if c.is_attention_check)
    assert sides["left"] > 10 and sides["right"] > 10


def test_completion_codes_are_random_and_normalised() -> None:
    codes = {new_completion_code() for _ in range(200)}
    assert len(codes) == 200 and all(len(c) == 10 and set(c) <= set(CODE_ALPHABET) for c in codes)
    code = next(iter(codes))
    assert normalise_code(f" {code[:5].lower()}-{code[5:]} ") == code
    for bad in ["", "O0O0O0", 123]:
        with pytest.raises(InputError):
            normalise_code(bad)
