"""The study plan: definition loading and its errors, Latin-square balance, swapped repeats, attention checks."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from feedback.record.errors import InputError
from feedback.studies.plan import assign_items, latin_square_cells, position_balance, side_balance
from feedback.studies.study import (
    ATTENTION_CLEAN,
    ATTENTION_CONTROL,
    CODE_ALPHABET,
    Condition,
    StudyDefinition,
    gallery_answer,
    gallery_pairs,
    load_study,
    new_completion_code,
    normalise_code,
    parse_condition,
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


# -------------------------------------------------------------------------------------------- galleries
GALLERY = {**BASE, "conditions": ["nlm", "bicubic", "sipl", "median"], "candidates_per_round": 3,
           "degradations": ["noise:25"], "images": ["a.png", "b.png", "c.png", "d.png", "e.png"]}


def test_gallery_size_is_checked_and_k2_stays_pairwise() -> None:
    for k in (1, 5, 7, True, 2.5):
        with pytest.raises(InputError, match=r"candidates_per_round must be an integer in \[2, 4\]"):
            study_from_dict({**GALLERY, "candidates_per_round": k})
    with pytest.raises(InputError, match=r"\[2, 3\]"):
        make(candidates_per_round=4)  # three conditions
    study = study_from_dict(GALLERY)
    assert study.is_gallery and len(study.condition_subsets) == 4 and "best" in study.instructions
    assert study_from_dict({**GALLERY, "instructions": "Mine."}).instructions == "Mine."
    assert not make().is_gallery and make().instructions.startswith("Two restorations")
    assert all(isinstance(i, type(assign_items(make(), 0, 0)[0])) for i in assign_items(make(), 1, 0))


def test_gallery_latin_square_balances_subsets_and_positions() -> None:
    study = study_from_dict({**GALLERY, "repeat_share": 0, "attention_checks": 0})
    subsets, k = study.condition_subsets, study.candidates_per_round
    cells, places = Counter(), Counter()
    for i in range(k * len(subsets)):  # K|S| consecutive participants
        items = assign_items(study, i, seed=1)
        assert sorted(item.stimulus for item in items) == list(range(5))  # every stimulus once
        for item in items:
            subset = tuple(c for c in study.conditions if c in item.shown)
            cells[item.stimulus, subset] += 1
            for p, condition in enumerate(item.shown):
                places[item.stimulus, subset, condition, p] += 1
        assert sum(position_balance(items).values()) == 5 * k
    # every (stimulus, subset) cell k times, and within it every condition at every position exactly once
    assert set(cells.values()) == {k} and len(cells) == 5 * len(subsets)
    assert set(places.values()) == {1} and len(places) == 5 * len(subsets) * k * k
    # the base order is a seeded permutation, not the definition order everywhere
    assert len({assign_items(study, i, seed=1)[0].shown for i in range(8)}) > 1


def test_gallery_repeats_and_attention_checks() -> None:
    study = study_from_dict({**GALLERY, "repeat_share": 0.4, "attention_checks": 2})
    seen_expected = set()
    for i in range(12):
        items = assign_items(study, i, seed=3)
        assert len(items) == study.n_items == 5 + 2 + 2
        assert [item.position for item in items] == list(range(len(items)))
        for item in items:
            assert len(item.shown) == 3
            if item.is_repeat:
                first = items[item.repeat_of]
                assert first.position < item.position and first.stimulus == item.stimulus
                assert sorted(first.shown) == sorted(item.shown) and first.shown != item.shown
            elif item.is_attention_check:
                assert item.shown.count(ATTENTION_CLEAN) == 1 and item.shown.count(ATTENTION_CONTROL) == 2
                assert item.shown[int(item.expected) - 1] == ATTENTION_CLEAN
                seen_expected.add(item.expected)
            else:
                assert len(set(item.shown)) == 3 and set(item.shown) <= set(study.conditions)
    assert seen_expected == {"1", "2", "3"}
    assert assign_items(study, 4, seed=3) == assign_items(study, 4, seed=3)  # deterministic


def test_gallery_pairs_and_answers() -> None:
    shown = ["a", "b", "c", "d"]
    assert gallery_pairs(shown, 2) == [("c", "a"), ("c", "b"), ("c", "d")]
    assert gallery_pairs(shown, 2, worst=0) == [("c", "a"), ("c", "b"), ("c", "d"), ("b", "a"), ("d", "a")]
    with pytest.raises(InputError, match="different positions"):
        gallery_pairs(shown, 1, worst=1)
    assert gallery_answer(3, 4) == gallery_answer(" 3", 4) == "3"
    for bad in ("0", "5", "left", None, True, 2.0):
        with pytest.raises(InputError, match="gallery position 1..4"):
            gallery_answer(bad, 4)


def test_condition_names_parse_with_prior_and_selector() -> None:
    assert parse_condition("sipl") == Condition("sipl", "backbone", "sipl")
    auto = parse_condition("ttpo-auto:sipl;selector=piqe+entropy;prior=default")
    assert (auto.kind, auto.backbone, auto.prior, auto.selector) == ("ttpo-auto", "sipl", "default",
                                                                      ("piqe", "entropy"))
    assert parse_condition("ttpo-auto:nlm") == Condition("ttpo-auto:nlm", "ttpo-auto", "nlm")
    assert make(conditions=["nlm", "ttpo-auto:nlm;prior=other"]).conditions[1] == "ttpo-auto:nlm;prior=other"


@pytest.mark.parametrize("name, words", [
    ("ttpo-auto:nlm;prior=a;prior=b", ["'prior' is given twice"]),
    ("ttpo-auto:nlm;colour=red", ["unknown parameter 'colour'", "prior, selector"]),
    ("ttpo-auto:nlm;prior", ["needs a value"]),
    ("ttpo-auto:nlm;selector=piqe++entropy", ["joined by '+'"]),
    ("ttpo-auto:;prior=default", ["name the backbone"]),
    ("ttpo-magic:nlm", ["unknown kind 'ttpo-magic'"]),
    ("nlm;prior=default", ["apply to ttpo-auto"]),
    ("ttpo-auto:nlm; prior=default", ["no spaces"]),
    ("ttpo-auto:sipl_ablation;prior=default;selector=piqe+entropy+brisque+niqe", ["at most 64"]),
])
def test_bad_condition_names_show_the_syntax(name, words) -> None:
    with pytest.raises(InputError) as err:
        make(conditions=["nlm", name])
    for word in [*words, "ttpo-auto:<backbone>[;prior=<name>]"]:
        assert word in str(err.value)


def test_guide_study_definitions() -> None:
    guide = make(kind="guide", conditions=["ttpo-human:nlm;prior=other"], candidates_per_round=4)
    assert guide.plan_conditions == ("restored", "c0", "c1", "c2") and len(guide.condition_subsets) == 1
    items = assign_items(guide, 0, guide.seed)
    assert all(sorted(i.shown) == ["c0", "c1", "c2", "restored"] for i in items if not i.is_attention_check)
    for changes, words in [
        ({"kind": "guide", "candidates_per_round": 3}, ["exactly one condition", "ttpo-human:<backbone>"]),
        ({"kind": "guide", "conditions": ["ttpo-human:nlm"]}, ["[3, 6]"]),
        ({"kind": "guide", "conditions": ["ttpo-human:nlm"], "candidates_per_round": 3, "guide_study": "x"},
         ["takes no guide_study"]),
        ({"kind": "survey"}, ["kind must be one of compare, guide"]),
        ({"conditions": ["nlm", "ttpo-human:nlm"]}, ["need guide_study"]),
        ({"guide_study": "abc"}, ["used by 'ttpo-human:<backbone>' conditions only"]),
        ({"conditions": ["nlm", "ttpo-human:nlm;selector=piqe"], "guide_study": "abc"}, ["unknown parameter"]),
        ({"conditions": ["nlm", "ttpo-human:nlm"], "guide_study": "abc", "min_guide_votes": 0}, ["min_guide_votes"]),
    ]:
        with pytest.raises(InputError) as err:
            make(**changes)
        assert all(w in str(err.value) for w in words), (changes, str(err.value))


@pytest.mark.parametrize("best, worst, expected", [
    ({"c1": 3, "c0": 1}, {"restored": 2, "c0": 1}, (["c1"], ["restored"])),  # most worst marks
    ({"c1": 2, "c0": 2}, {}, (["c0", "c1"], ["restored"])),  # tie for best: both preferred; least picked rejected
    ({"c1": 2}, {}, (["c1"], ["restored", "c0"])),  # no worst marks: the least picked, tied
    ({"c1": 2, "restored": 1}, {"c1": 5, "c0": 1}, (["c1"], ["c0"])),  # a preferred one is never rejected
    ({"c1": 1, "c0": 1, "restored": 1}, {"c0": 2}, ([], [])),  # all tied: no preference
    ({}, {}, ([], [])),  # no votes
])
def test_guide_choice_ties(best, worst, expected) -> None:
    from feedback.studies.guide import guide_choice

    assert guide_choice(["restored", "c0", "c1"], best, worst) == expected
