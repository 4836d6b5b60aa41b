"""Adaptive pair sampling (feedback.studies.sampling) and its simulation (feedback.studies.simulate): the posterior, the
information gain, deterministic choices that spread over pending items, the slot plan, the command's contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from feedback.record.errors import InputError
from feedback.studies import simulate
from feedback.studies.sampling import (
    SamplerState,
    adaptive_slots,
    bt_posterior,
    choose_adaptive_item,
    information_gain,
)
from feedback.studies.study import StudyDefinition, completion_link, study_from_dict

CONDITIONS = ("a", "b", "c", "d")


def _study(**extra) -> StudyDefinition:
    return study_from_dict({"name": "s", "images": ["i0", "i1", "i2"], "conditions": list(CONDITIONS),
                            "consent_text": "ok", "consent_version": "v1", "items_per_participant": 6,
                            "repeat_share": 0.34, "attention_checks": 1, "sampling": "adaptive", **extra})


def test_posterior_recovers_strengths_and_pending_only_narrows() -> None:
    rng = np.random.default_rng(0)
    true = np.array([1.0, 0.3, -0.2, -1.1])
    wins = np.zeros((4, 4))
    for _ in range(600):
        i, j = rng.choice(4, 2, replace=False)
        winner, loser = (i, j) if rng.random() < 1 / (1 + np.exp(true[j] - true[i])) else (j, i)
        wins[winner, loser] += 1
    mean, cov = bt_posterior(wins)
    assert np.allclose(mean - mean.mean(), true - true.mean(), atol=0.25)
    pending = np.zeros((4, 4))
    pending[0, 1] = pending[1, 0] = 500
    mean2, cov2 = bt_posterior(wins, pending)
    var = lambda c: c[0, 0] + c[1, 1] - 2 * c[0, 1]
    assert np.allclose(mean, mean2) and var(cov2) < 0.5 * var(cov)


def test_information_gain_prefers_uncertain_close_pairs() -> None:
    wins = np.zeros((3, 3))
    wins[0, 1] = wins[1, 0] = 50  # a and b: compared often, equal
    wins[0, 2], wins[2, 0] = 30, 1  # a beats c clearly
    gain = information_gain(*bt_posterior(wins))
    assert np.allclose(gain, gain.T) and np.all(np.diag(gain) == 0) and np.all(gain >= 0)
    # b vs c was never compared: the most to learn; a vs b is settled close to 0.5: little to learn
    assert gain[1, 2] > gain[0, 1] and gain[1, 2] > gain[0, 2]
    assert information_gain(np.zeros(2), np.zeros((2, 2)))[0, 1] == pytest.approx(0.0, abs=1e-9)  # no uncertainty


def test_choices_are_deterministic_and_spread_over_pending_items() -> None:
    study = _study()
    state = SamplerState(study.plan_conditions)
    first = choose_adaptive_item(study, state, 0, 0, study.seed)
    assert first == choose_adaptive_item(study, SamplerState(study.plan_conditions), 0, 0, study.seed)
    assert first.n_votes == 0 and first.score > 0
    # a second participant asking while the first item is open gets another pair
    state.add(first.item.stimulus, first.item.left, first.item.right, None)
    second = choose_adaptive_item(study, state, 1, 0, study.seed)
    assert {second.item.left, second.item.right} != {first.item.left, first.item.right}
    # answering the open item changes the state the next choice sees (votes counted)
    state.answer(first.item.stimulus, first.item.left, first.item.right, "left")
    assert state.n_votes == 1 and state.pending.sum() == 0
    assert choose_adaptive_item(study, state, 2, 0, study.seed).n_votes == 1
    # a participant is shown the stimulus seen least
    seen = {0: 2, 1: 0, 2: 1}
    assert choose_adaptive_item(study, state, 3, 4, study.seed, seen).item.stimulus == 1


def test_adaptive_slots_place_repeats_after_their_item() -> None:
    study = _study()
    for participant in range(5):
        slots = adaptive_slots(study, participant, study.seed)
        assert len(slots) == study.n_items == 6 + 2 + 1
        mains = [n for n, s in enumerate(slots) if "main" in s]
        assert [slots[n]["main"] for n in mains] == list(range(6))
        for n, slot in enumerate(slots):
            if "repeat_of_main" in slot:
                assert mains[slot["repeat_of_main"]] < n
            if "attention" in slot:
                assert slot["attention"].is_attention_check and slot["attention"].position == n
        assert sum("attention" in s for s in slots) == 1 and adaptive_slots(study, participant, study.seed) == slots


def test_definition_options_are_checked() -> None:
    assert _study().sampling == "adaptive" and _study(sampling="latin").sampling == "latin"
    with pytest.raises(InputError, match="sampling must be one of latin, adaptive"):
        _study(sampling="ucb")
    with pytest.raises(InputError, match="pairwise compare studies"):
        _study(candidates_per_round=3)
    with pytest.raises(InputError, match="completion_url must be null or an http"):
        _study(completion_url="javascript:alert(1)")
    with pytest.raises(InputError, match="metrics must be a list"):
        _study(metrics=["a", "b", "c", "d", "e"])
    assert _study(metrics=["NIQE", "piqe"]).stimulus_metrics == ("piqe", "entropy", "niqe")
    assert completion_link("https://x.test/done?cc=", "AB") == "https://x.test/done?cc=AB"
    assert completion_link("https://x.test/{code}/done", "AB") == "https://x.test/AB/done"


def test_simulation_contract_and_determinism(capsys: pytest.CaptureFixture[str]) -> None:
    simulate.main(["--conditions", "4", "--participants", "8", "--items", "6", "--repeats", "3", "--seed", "1",
                   "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["repeats"] == 3 and out["config"]["conditions"] == 4
    for sampler in ("adaptive", "latin"):
        report = out[sampler]
        assert isinstance(report["votes_to_recover"], int) and len(report["per_repeat"]) == 3
        assert 1 <= report["votes_to_recover"] <= report["budget"] + 1 == 8 * 6 + 1
    assert out == json.loads(json.dumps(simulate.simulate(simulate.SimulationConfig(
        4, 8, items=6, repeats=3, seed=1))))
    assert simulate.votes_to_recover([0.5, 0.95, 0.8, 1.0, 1.0], 0.9) == 4  # from the 4th vote on
    assert simulate.votes_to_recover([1.0, 0.5], 0.9) is None
    assert simulate.kendall_tau(np.array([3, 2, 1.0]), np.array([1, 2, 3.0])) == -1.0
