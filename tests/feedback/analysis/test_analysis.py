"""Analysis of a simulated user study: planted preference order, noisy, random and inattentive participants."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from feedback.analysis import stats
from feedback.analysis.report import analyze, annotator_alpha, main, participant_quality
from feedback.analysis.votes import AnalysisConfig, Vote, load_votes
from feedback.record import choices, store
from feedback.record.choices import ChoiceInput, ChoiceKind
from feedback.record.db import Database, open_database
from feedback.record.images import ImageStore
from feedback.record.store import CandidateSpec

#: Conditions in the planted order of preference, best first, with their Bradley-Terry log-strengths.
CONDITIONS = ("ttpo-human", "ttpo-metric", "sipl", "promptir")
STRENGTH = {"ttpo-human": 1.5, "ttpo-metric": 0.5, "sipl": -0.5, "promptir": -1.5}
#: Participants: probability of picking the better condition, or "left" for always the first-shown image.
PARTICIPANTS = {"careful": 1.0, "noisy-a": 0.9, "noisy-b": 0.85, "random": 0.5, "lefty": "left"}
SPEC = "noise:25"


@dataclass
class Study:
    db: Database
    data_dir: Path
    url: str
    human_pairs: int
    pseudonyms: dict[str, str]


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_study(tmp_path: Path, units_per_pair: int = 4, repeats: int = 8, seed: int = 0,
                participants: dict[str, float | str] = PARTICIPANTS) -> Study:
    """Every participant judges the same units (each a pair of conditions' outputs on one source image,
    in a random left/right order), then `repeats` of them again with the sides swapped. Also one tie and
    one metric-selector choice (not a human vote)."""
    rng = np.random.default_rng(seed)
    data_dir = tmp_path / "data"
    url = f"sqlite:///{tmp_path / 'study.sqlite3'}"
    db = open_database(url)
    images = ImageStore(data_dir)

    def png() -> str:
        return images.put_array(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))

    units = []  # (source id, restored id, {condition: image id}, conditions in display order)
    pairs = [(a, b) for i, a in enumerate(CONDITIONS) for b in CONDITIONS[i + 1:]]
    with db.sessions.begin() as s:
        for n in range(units_per_pair * len(pairs)):
            a, b = pairs[n % len(pairs)]
            gt, degraded = png(), png()
            src = store.add_source_image(s, image_hash=gt, width=8, height=8, origin="study", degradation_spec=SPEC,
                                         degradation_seed=n, gt_image_hash=gt, degraded_image_hash=degraded)
            order = (a, b) if rng.random() < 0.5 else (b, a)
            units.append((src.id, png(), {a: png(), b: png()}, order))
    human_pairs = 0
    pseudonyms = {}
    for name, behaviour in participants.items():
        with db.sessions.begin() as s:
            pseudonyms[name] = h("person" + name)
            session = store.create_annotator_session(s, pseudonyms[name], h("token" + name), study_id="pilot")
            schedule = [(u, u[3]) for u in units] + [(u, u[3][::-1]) for u in units[:repeats]]
            for (source_id, restored, outputs, _), order in schedule:
                rnd = store.create_round(s, store.RoundRecord(
                    session_id=session.id, source_image_id=source_id, backbone_name="sipl-s", code_version="test",
                    device="cpu", dtype="float32", seeds=(7,), params={"strengths": [0.2]},
                    restored_image_hash=restored, study_id="pilot", condition="A/B"))
                cands = store.add_candidates(s, rnd.id, [CandidateSpec(
                    image_hash=outputs[c], method=c, seed=pos, strength=0.2, position=pos,
                    scores={"fused": STRENGTH[c] + 0.1 * rng.standard_normal(), "piqe": 50 - 10 * STRENGTH[c],
                            "entropy": float(rng.random())}) for pos, c in enumerate(order)])
                if behaviour == "left":
                    pick = 0
                else:
                    better = 0 if STRENGTH[order[0]] > STRENGTH[order[1]] else 1
                    pick = better if rng.random() < behaviour else 1 - better
                choices.record_choice(s, rnd.id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[pick].id],
                                                             [cands[1 - pick].id]))
                human_pairs += 1
    with db.sessions.begin() as s:  # one tie by the careful participant and one choice made by a metric
        session = store.create_annotator_session(s, pseudonyms["careful"], h("token2"), study_id="pilot")
        for selector, kind in (("human", "tie"), ("piqe", "pairwise")):
            source_id, restored, outputs, order = units[0]
            rnd = store.create_round(s, store.RoundRecord(
                session_id=session.id, source_image_id=source_id, backbone_name="sipl-s", code_version="test",
                device="cpu", dtype="float32", study_id="pilot", restored_image_hash=restored))
            cands = store.add_candidates(s, rnd.id, [CandidateSpec(image_hash=outputs[c], method=c, position=p)
                                                     for p, c in enumerate(order)])
            choices.record_choice(s, rnd.id, ChoiceInput(kind, [cands[0].id], [cands[1].id], selector=selector))
        human_pairs += 1
    return Study(db, data_dir, url, human_pairs, pseudonyms)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    built = build_study(tmp_path_factory.mktemp("study"))
    yield built
    built.db.engine.dispose()


@pytest.fixture(scope="module")
def report(study: Study) -> dict:
    with study.db.sessions() as s:
        votes = load_votes(s)
    return analyze(votes, AnalysisConfig(n_resamples=300, seed=1))


def test_load_votes_keeps_human_pairs_only(study: Study) -> None:
    with study.db.sessions() as s:
        votes = load_votes(s)
        assert len(votes) == study.human_pairs
        assert {v.annotator for v in votes} == set(study.pseudonyms.values())
        assert sum(v.is_tie for v in votes) == 1
        assert load_votes(s, study_id="other") == []
        arm = load_votes(s, condition_by="arm+method")  # arm: the round's condition, else the backbone
        labels = {c for v in arm for c in (v.chosen_condition, v.rejected_condition)}
        assert {c for c in labels if c.startswith("A/B/")} == {f"A/B/{c}" for c in CONDITIONS}
        assert {c.split("/")[0] for c in labels} == {"A", "sipl-s"}  # the tie round has no condition


def test_bradley_terry_and_win_rates_recover_the_planted_order(report: dict) -> None:
    conditions = report["conditions"]
    assert set(conditions) == set(CONDITIONS)
    bt = [conditions[c]["bt_score"] for c in CONDITIONS]
    rates = [conditions[c]["win_rate"] for c in CONDITIONS]
    assert bt == sorted(bt, reverse=True), bt
    assert rates == sorted(rates, reverse=True), rates
    for c in CONDITIONS:
        lo, hi = conditions[c]["ci"]
        assert 0 <= lo <= conditions[c]["win_rate"] <= hi <= 1
        lo, hi = conditions[c]["bt_ci"]
        assert lo <= conditions[c]["bt_score"] <= hi
    # the best and the worst condition are told apart with confidence
    assert conditions["ttpo-human"]["bt_ci"][0] > conditions["promptir"]["bt_ci"][1]
    assert sum(c["n"] for c in conditions.values()) == 2 * report["n_votes"]


def test_inattentive_participant_is_flagged(report: dict, study: Study) -> None:
    people = report["participants"]
    lefty = people[study.pseudonyms["lefty"]]
    assert lefty["position_bias"] == 1.0
    assert lefty["consistency"] == 0.0  # repeats swap sides, so always-left never agrees with itself
    assert lefty["flagged"] and len(lefty["reasons"]) == 2
    for name in ("careful", "noisy-a", "noisy-b"):
        person = people[study.pseudonyms[name]]
        assert not person["flagged"], (name, person)
        assert 0.25 < person["position_bias"] < 0.75
    # 8 swapped repeats agree; the later tie on the first unit counts as the ninth repeat, a disagreement
    assert people[study.pseudonyms["careful"]]["consistency"] == pytest.approx(8 / 9)
    assert people[study.pseudonyms["careful"]]["votes"] == 24 + 8 + 1


def test_chance_consistency_is_flagged() -> None:
    votes = [Vote("p", f"a{i}", f"b{i}", "x", "y", 0, 1, 1.0) for i in range(8)]
    votes += [Vote("p", f"b{i}" if i % 2 else f"a{i}", f"a{i}" if i % 2 else f"b{i}", "x", "y", 1, 0, 1.0)
              for i in range(8)]
    person = participant_quality(votes)["p"]
    assert person["consistency"] == 0.5 and person["flagged"]
    assert any("consistency" in r for r in person["reasons"])


def test_metric_agreement(report: dict) -> None:
    agreement = report["metric_agreement"]
    # the metrics follow the planted order (piqe is lower-better); the judges agree with it ~80% of the time
    assert agreement["fused"]["rate"] > 0.7 and agreement["piqe"]["rate"] > 0.7
    assert abs(agreement["fused"]["rate"] - agreement["piqe"]["rate"]) < 0.1
    assert 0.3 < agreement["entropy"]["rate"] < 0.7  # random scores
    assert agreement["piqe"]["n"] == report["n_votes"] - 1  # the tie has no winner
    for a in agreement.values():  # a participant-bootstrap interval around each rate; these votes are pairwise
        assert a["ci"][0] <= a["rate"] <= a["ci"][1] and a["ci"][1] - a["ci"][0] > 0.01
        assert a["pairwise"] == {"rate": a["rate"], "n": a["n"]} and a["gallery"]["n"] == 0
    # piqe agrees clearly above chance, entropy's interval holds chance
    assert agreement["piqe"]["ci"][0] > 0.5 and agreement["entropy"]["ci"][0] < 0.5 < agreement["entropy"]["ci"][1]


def test_gallery_metric_agreement_is_top_one_match() -> None:
    """Gallery votes: the metric's best of the shown images against the person's pick (chance 1/K)."""
    def vote(person, choice, best, other, scores):
        return Vote(person, best, other, best[0], other[0], 0, 1, 1.0, {"m": scores[best]}, {"m": scores[other]},
                    choice_id=choice, gallery_size=3)

    scores = {"a1": 3.0, "b1": 2.0, "c1": 1.0, "a2": 1.0, "b2": 5.0, "c2": 0.0}
    votes = [vote("p", "x", "a1", "b1", scores), vote("p", "x", "a1", "c1", scores),  # metric best a1 = picked
             vote("q", "y", "a2", "b2", scores), vote("q", "y", "a2", "c2", scores)]  # metric best b2, picked a2
    a = analyze(votes, AnalysisConfig(n_resamples=50))["metric_agreement"]["m"]
    assert a["gallery"] == {"rate": 0.5, "n": 2, "chance": pytest.approx(1 / 3)}
    assert a["n"] == 4 and a["rate"] == 0.75 and a["pairwise"]["n"] == 0  # pairs: 3 of 4 ranked as the person


def test_condition_tests_are_holm_corrected(report: dict) -> None:
    tests = report["condition_tests"]
    assert "Holm" in tests["correction"] and tests["alpha"] == pytest.approx(0.05)
    pairs = {(r["a"], r["b"]): r for r in tests["pairs"]}
    assert len(pairs) == len(CONDITIONS) * (len(CONDITIONS) - 1) // 2
    for r in pairs.values():
        assert r["p"] <= r["p_holm"] <= 1 and r["ci"][0] <= r["bt_difference"] <= r["ci"][1]
        assert r["significant"] == (r["p_holm"] < 0.05)
    # the strongest and the weakest planted conditions differ clearly
    extreme = pairs.get(("promptir", "ttpo-human"))
    assert extreme["bt_difference"] < 0 and extreme["significant"]
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0] and stats.holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])


def simulated_votes(annotators: int, units: int, p_correct: float, seed: int) -> list[Vote]:
    rng = np.random.default_rng(seed)
    votes = []
    for person in range(annotators):
        for u in range(units):
            good, bad = h(f"good{u}"), h(f"bad{u}")  # hashes: which image sorts first varies by unit
            if rng.random() >= p_correct:
                good, bad = bad, good
            votes.append(Vote(f"p{person}", good, bad, "x", "y", 0, 1, 1.0))
    return votes


def test_krippendorff_alpha_ranges(report: dict) -> None:
    assert annotator_alpha(simulated_votes(4, 40, 1.0, 0)) == pytest.approx(1.0)
    assert 0.4 < annotator_alpha(simulated_votes(4, 40, 0.9, 0)) < 0.9
    assert abs(annotator_alpha(simulated_votes(5, 200, 0.5, 0))) < 0.05
    assert 0.0 < report["krippendorff_alpha"] < 0.8  # study: good judges mixed with random and left-picking ones


def test_krippendorff_alpha_textbook_example_with_missing_data() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: alpha = 0.743
    table = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3", ". 3 3 3 2 3 4 2 2 5 1 .",
             "1 2 3 3 2 4 4 1 2 5 1 ."]
    ratings: dict[int, dict[int, str]] = {}
    for coder, row in enumerate(table):
        for unit, value in enumerate(row.split()):
            if value != ".":
                ratings.setdefault(unit, {})[coder] = value
    assert stats.krippendorff_alpha_nominal(ratings) == pytest.approx(0.743, abs=5e-4)
    assert stats.krippendorff_alpha_nominal({0: {"a": 1}}) is None


def test_bradley_terry_fits_known_strengths() -> None:
    rng = np.random.default_rng(3)
    true = np.array([1.0, 0.0, -0.3, -0.7])
    wins = np.zeros((4, 4))
    for _ in range(20000):
        i, j = rng.choice(4, 2, replace=False)
        p = 1 / (1 + math.exp(true[j] - true[i]))
        wins[(i, j) if rng.random() < p else (j, i)] += 1
    assert np.allclose(stats.bradley_terry(wins), true - true.mean(), atol=0.05)
    never = np.array([[0, 5.0], [0, 0]])  # item 1 never won: the prior keeps it finite
    scores = stats.bradley_terry(never)
    assert np.all(np.isfinite(scores)) and scores[0] > scores[1] + 2
    ties = np.array([[0, 3.0], [3.0, 0]])  # ties only: equal strengths
    assert np.allclose(stats.bradley_terry(ties), 0.0)


def test_cli_json_csv_and_plots(study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--db", study.url, "--json", "--resamples", "100", "--csv", str(tmp_path / "csv"),
          "--plots", str(tmp_path / "plots")])
    out = json.loads(capsys.readouterr().out)
    assert {"conditions", "krippendorff_alpha", "participants", "metric_agreement"} <= set(out)
    assert out["superseded_choices"] == 0
    for condition in out["conditions"].values():
        assert {"win_rate", "ci", "bt_score", "bt_ci", "n"} <= set(condition)
    for person in out["participants"].values():
        assert {"votes", "consistency", "position_bias", "flagged", "reasons"} <= set(person)
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["condition_tests.csv", "conditions.csv",
                                                                     "metric_agreement.csv", "participants.csv"]
    agreement_csv = (tmp_path / "csv" / "metric_agreement.csv").read_text().splitlines()
    assert agreement_csv[0].startswith("metric,agreement,ci_low,ci_high,n,") and len(agreement_csv) > 1
    assert len((tmp_path / "csv" / "conditions.csv").read_text().splitlines()) == 1 + len(CONDITIONS)
    plots = sorted((tmp_path / "plots").glob("*.png"))
    assert len(plots) == 4 and all(p.read_bytes().startswith(b"\x89PNG") for p in plots)


def test_cli_on_empty_database_and_no_torch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    open_database(url).engine.dispose()
    code = ("import sys, json, io, contextlib; from feedback.analysis import export, report as analysis; buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): analysis.main(['--db', sys.argv[1], '--json'])\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'report': json.loads(buf.getvalue())}))")
    done = subprocess.run([sys.executable, "-c", code, url], check=False, capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["torch"] is False  # the database layer never imports torch
    assert result["report"]["conditions"] == {} and result["report"]["participants"] == {}
    assert result["report"]["krippendorff_alpha"] is None


def test_excluding_flagged_participants(study: Study, report: dict) -> None:
    with study.db.sessions() as s:
        votes = load_votes(s)
    clean = analyze(votes, AnalysisConfig(n_resamples=200, exclude_flagged=True))
    flagged = sorted(p for p, r in report["participants"].items() if r["flagged"])
    assert study.pseudonyms["lefty"] in flagged and clean["excluded_participants"] == flagged
    assert clean["participants"] == report["participants"]  # everyone stays listed
    assert clean["n_votes"] == report["n_votes"] - sum(report["participants"][p]["votes"] for p in flagged)
    assert clean["krippendorff_alpha"] > report["krippendorff_alpha"]
    bt = [clean["conditions"][c]["bt_score"] for c in CONDITIONS]
    assert bt == sorted(bt, reverse=True)
    assert clean["conditions"]["ttpo-human"]["bt_score"] > report["conditions"]["ttpo-human"]["bt_score"]


def test_cli_refuses_a_missing_database_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--db", f"sqlite:///{tmp_path / 'nope.sqlite3'}", "--json"])
    assert exit_info.value.code == 2 and "no database file" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite3").exists()
