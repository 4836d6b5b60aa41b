"""The feedback service, its engine gate, upload checks and the Gradio handlers, in-process (tiny engine settings)."""

from __future__ import annotations

import io
import json
import threading

import gradio as gr
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, func, select

from feedback.loop.engine import EngineSettings, RefineSettings, RoundSettings
from feedback.loop.gate import Busy, EngineGate
from feedback.loop.service import FeedbackService
from feedback.loop.uploads import UploadLimits, check_image_array, decode_image_bytes
from feedback.record.choices import ChoiceInput, ChoiceKind, latest_choice
from feedback.record.db import open_database
from feedback.record.errors import Conflict, InputError
from feedback.record.models import Candidate, Choice, Refinement, Round, SourceImage
from feedback.web import ui, ui_choices
from feedback.web.api import build_api
from restoration.diffusion.pixel import build_pixel_unet, save_pixel_prior

try:
    from conftest import TINY_PRIOR  # the module pytest loaded (tests/ is on sys.path under pytest)
except ImportError:
    from tests.conftest import TINY_PRIOR

SETTINGS = EngineSettings(backbone="nlm", round=RoundSettings(num_candidates=2, steps=2),
                          refine=RefineSettings(steps=2))


def _image(size=40, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([x, y, 1 - x], -1) + 0.05 * rng.standard_normal((size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("svc")
    return FeedbackService(open_database(data_dir=data), str(data), SETTINGS, admin_token="admin")


@pytest.fixture(scope="module")
def session_id(service):
    return service.create_session("Ada")[0]


# ---------------------------------------------------------------------------------------- gate, uploads
def test_engine_gate_refuses_beyond_queue():
    gate = EngineGate(max_waiting=0, retry_after=7)  # one running, none may wait
    inside, release = threading.Event(), threading.Event()

    def hold():
        with gate.slot():
            inside.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    with pytest.raises(Busy) as err:
        with gate.slot():
            pass
    assert err.value.retry_after == 7
    release.set()
    holder.join(5)
    with gate.slot():  # free again
        pass


def test_upload_checks():
    limits = UploadLimits(max_bytes=200_000, max_pixels=100 * 100, min_side=16, max_side=128)
    assert decode_image_bytes(_png(_image(40)), limits).shape == (40, 40, 3)
    with pytest.raises(InputError, match="sides"):
        decode_image_bytes(_png(np.zeros((8, 40, 3), np.uint8)), limits)
    with pytest.raises(InputError, match="pixels"):
        decode_image_bytes(_png(np.zeros((120, 120, 3), np.uint8)), limits)
    with pytest.raises(InputError, match="corrupt|not an image"):
        decode_image_bytes(_png(_image(40))[:100], limits)
    grey = check_image_array(np.full((32, 32), 0.5, np.float32), limits)
    assert grey.shape == (32, 32, 3) and grey.dtype == np.uint8 and grey[0, 0, 0] == 128


# ---------------------------------------------------------------------------------------- rounds
def test_round_records_everything_to_regenerate(service, session_id):
    view = service.start_round(session_id, _image(), degradation="noise:20", candidates=2, seed=11)
    assert len(view.candidates) == 3 and sum(c.is_restored for c in view.candidates) == 1
    assert sorted(c.position for c in view.candidates) == [0, 1, 2]
    with service.db.sessions.begin() as s:
        rnd = s.get(Round, view.round_id)
        src = s.get(SourceImage, rnd.source_image_id)
        assert src.degradation_spec == "noise:20" and src.degradation_seed == 11
        assert src.gt_image_hash == src.image_hash != src.degraded_image_hash
        assert rnd.backbone_name == "nlm" and rnd.prior_weights_hash and len(rnd.prior_weights_hash) == 64
        assert rnd.seeds == [11, 12] and rnd.code_version and rnd.device == "cpu" and rnd.dtype == "float32"
        assert {"restore", "candidates"} <= set(rnd.stage_seconds)
        assert rnd.params["candidates"]["steps"] == 2
        seeds = sorted(c.seed for c in rnd.candidates if not c.is_restored)
    assert seeds == [11, 12]
    again = service.start_round(session_id, _image(), degradation="noise:20", candidates=2, seed=11)
    assert sorted(c.image_id for c in again.candidates) == sorted(c.image_id for c in view.candidates)


def test_choices_auto_and_refine(service, session_id):
    view = service.start_round(session_id, _png(_image(seed=2)), candidates=2, seed=5)
    with pytest.raises(Conflict):
        service.refine(view.round_id)
    auto = service.auto_choose(view.round_id, ["piqe"])
    assert auto.selector == "piqe" and auto.pairs >= 1 and set(auto.scores) == {c.id for c in view.candidates}
    with service.db.sessions.begin() as s:
        scores = s.scalars(select(Candidate.scores).where(Candidate.round_id == view.round_id)).all()
    assert all("piqe" in sc and "fused" in sc for sc in scores)
    tie = service.record_choice(view.round_id, ChoiceInput(ChoiceKind.TIE))
    assert tie.kind == "tie" and tie.pairs == 3
    result = service.refine(view.round_id, generate_next=False)  # a tie refines with fidelity only
    assert result.next_round.round_index == 1 and not result.next_round.candidates
    with service.db.sessions.begin() as s:
        ref = s.get(Refinement, result.refinement_id)
        assert ref.choice_id == tie.choice_id and ref.params["choice_kind"] == "tie"
    nxt = service.generate_candidates(result.next_round.round_id)
    assert nxt.start_image_id == result.image_id
    assert any(c.is_restored and c.image_id == result.image_id for c in nxt.candidates)
    with pytest.raises(Conflict):
        service.generate_candidates(result.next_round.round_id)
    with pytest.raises(InputError, match="did you mean|unknown"):
        service.auto_choose(nxt.round_id, ["piqee"])
    history = service.history(session_id)
    assert any(r["next_round_id"] == nxt.round_id for r in history)


def test_a_vote_through_the_service_is_one_write_transaction_with_the_owner_check_inside(service, session_id):
    """One transaction on the write sessions per vote (no separate read for the access check); another session's
    token is refused inside it (403) and nothing is stored; the admin may vote on any round."""
    from feedback.loop.sessions import AuthError, Principal
    from feedback.record import store
    from feedback.record.db import READ_ONLY_OPTION

    with service.db.sessions.begin() as s:
        source = store.add_source_image(s, image_hash="a" * 64, width=8, height=8, origin="sample",
                                        session_id=session_id)
        rnd = store.create_round(s, store.RoundRecord(session_id=session_id, source_image_id=source.id,
                                                      backbone_name="nlm", code_version="t", device="cpu",
                                                      dtype="float32"))
        ids = [c.id for c in store.add_candidates(s, rnd.id, [store.CandidateSpec(f"{i}" * 64, "m") for i in (1, 2)])]
    begun: list[bool] = []  # per transaction begun: whether it was a read-only one

    def listener(conn) -> None:
        begun.append(bool(conn.get_execution_options().get(READ_ONLY_OPTION)))

    event.listen(service.db.engine, "begin", listener)
    try:
        vote = ChoiceInput(ChoiceKind.PAIRWISE, ids[:1], ids[1:], idempotency_key="one-transaction")
        view = service.record_choice(rnd.id, vote, who=Principal(session_id))
        assert view.created and view.kind == "pairwise" and view.pairs == 1 and begun == [False]
        begun.clear()
        with pytest.raises(AuthError, match="another session") as refused:
            service.record_choice(rnd.id, ChoiceInput(ChoiceKind.SKIP), who=Principal("f" * 32))
        assert refused.value.status == 403 and begun == [False]
        skip = service.record_choice(rnd.id, ChoiceInput(ChoiceKind.SKIP), who=Principal(None, admin=True))
        assert skip.kind == "skip" and skip.superseded == 1
    finally:
        event.remove(service.db.engine, "begin", listener)
    with service.db.reads.begin() as s:
        assert s.scalar(select(func.count()).select_from(Choice).where(Choice.round_id == rnd.id)) == 2


def test_bad_settings_are_input_errors(service, session_id):
    for kwargs in ({"backbone": "nope"}, {"degradation": "blur:99"}, {"candidates": 9}, {"seed": "x"},
                   {"strengths": [1.5]}):
        with pytest.raises(InputError):
            service.start_round(session_id, _image(), **kwargs)
    with pytest.raises(InputError):
        service.refine("0" * 32, RefineSettings(steps=0))


def test_busy_is_503_with_retry_after(service, session_id):
    client = TestClient(build_api(service))
    token = client.post("/api/v1/sessions", json={"annotator": "Bo"}).json()
    headers = {"Authorization": f"Bearer {token['token']}"}
    saved = service.gate.max_waiting
    service.gate.max_waiting = -1  # the line is full
    try:
        r = client.post(f"/api/v1/sessions/{token['session_id']}/rounds", headers=headers,
                        files={"image": ("x.png", _png(_image()), "image/png")})
    finally:
        service.gate.max_waiting = saved
    assert r.status_code == 503 and r.headers["retry-after"] == "10" and "busy" in r.json()["error"]
    big = client.post(f"/api/v1/sessions/{token['session_id']}/rounds", headers=headers,
                      files={"image": ("x.png", b"0" * (service.limits.max_bytes + 100_000), "image/png")})
    assert big.status_code == 413 and "error" in big.json()


# ---------------------------------------------------------------------------------------- Gradio handlers
def test_ui_handlers(service):
    state, msg = ui.sign_in(service, "Grace", {})
    assert "Signed in" in msg and set(state) == {"session_id"}
    with pytest.raises(gr.Error):
        ui_choices.submit_pairwise(service, state, [], [], [])
    assert len(ui.sample_names()) >= 3 and ui.load_sample(ui.sample_names()[0]).endswith(".png")
    with pytest.raises(gr.Error):
        ui.load_sample("../../pyproject.toml")
    path = str(service.images.path_for(service.images.put_array(_image(48))))
    state, input_path, restored_path, msg, _rows, tiles, *_ = ui.restore(service, state, path, "noise:20", "nlm", 3)
    assert "restored" in msg and input_path != restored_path and tiles == []
    state, items, _p, _r, msg, rows = ui.generate(service, state, 2, 3, "0.1, 0.2", True)
    assert len(items) == 3 and [c for _, c in items] == ["#1", "#2", "#3"]
    captions = [c for _, c in ui_choices.mark(service, state, ["#2"], ["#1", "#3"], False)]
    assert captions[1].startswith("#2 ✓ preferred") and "✗ rejected" in captions[0]
    assert sum("(restored)" in c for c in captions) == 1
    crops = ui.inspect_detail(service, state, 0, 100, 16)
    assert len(crops) == 3 and all(img.size == (16, 16) for img, _ in crops)
    msg, rows = ui_choices.submit_pairwise(service, state, ["#2"], ["#1", "#3"], ["artefacts"])
    assert "2 preference pairs" in msg and rows[-1][5] == "pairwise" and rows[-1][3] == "default"
    state, (_before, after), download, msg, rows, sheet = ui.refine(service, state, 0.3, 2, 0.05,
                                                                   progress=lambda *a, **k: None)
    assert download == after and rows[-1][1] == "created"
    with Image.open(sheet) as png:  # input, restored, 2 candidates, refined (48 px) above their 32 px details at 2x
        assert png.size == (6 + 5 * (64 + 6), 2 * 22 + (48 + 22) + (64 + 22) + 6)
    state, items, *_ = ui.next_round(service, state, 2, -1, "", True)
    assert len(items) == 3 and "next_round_id" not in state


def test_page_submissions_record_once_per_click_and_a_changed_mind_supersedes(service):
    """Submit twice with the same marks (a double click): one choice. Change the marks and submit: it supersedes the
    first. Back to the first marks: a third choice (not the first one revived), which refine then uses."""
    state, _msg = ui.sign_in(service, "Lin", {})
    path = str(service.images.path_for(service.images.put_array(_image(32, seed=5))))
    state, *_ = ui.restore(service, state, path, "none", "nlm", 4)
    state, *_ = ui.generate(service, state, 2, 4, "", True)
    round_id, ids = state["round_id"], state["candidate_ids"]

    def live() -> tuple[int, int, list[str]]:
        with service.db.reads.begin() as s:
            choices = s.scalars(select(Choice).where(Choice.round_id == round_id)).all()
            current = latest_choice(s, round_id)
            return len(choices), sum(c.superseded_at is not None for c in choices), current.preferred_ids

    msg, _ = ui_choices.submit_pairwise(service, state, ["#1"], ["#3", "#2"], [])
    ui_choices.submit_pairwise(service, state, ["#1"], ["#2", "#3"], [])  # the same marks, listed in another order
    assert live() == (1, 0, [ids[0]]) and "replacing" not in msg
    msg, _ = ui_choices.submit_pairwise(service, state, ["#2"], ["#1"], [])
    assert live() == (2, 1, [ids[1]]) and "replacing the earlier choice" in msg
    ui_choices.submit_pairwise(service, state, ["#1"], ["#2", "#3"], [])
    ui_choices.submit_pairwise(service, state, ["#1"], ["#2", "#3"], [])
    assert live() == (3, 2, [ids[0]])
    with pytest.raises(gr.Error, match="tiles are named"):
        ui_choices.submit_pairwise(service, state, ["1"], ["#2"], [])
    result = service.refine(round_id, generate_next=False)
    with service.db.reads.begin() as s:
        assert s.get(Refinement, result.refinement_id).params["preferred"] == [ids[0]]


def test_region_marks_round_trip_through_the_service_the_page_export_and_analysis(service):
    """Boxes drawn on the page's tiles reach the choice (service and page handler), the export's `regions` and the
    analysis's heat map by the marked candidate's method; bad boxes are refused with what is allowed."""
    from feedback.analysis.export import preference_rows
    from feedback.analysis.votes import load_regions

    state, _msg = ui.sign_in(service, "Rhea", {})
    path = str(service.images.path_for(service.images.put_array(_image(32, seed=6))))
    state, *_ = ui.restore(service, state, path, "none", "nlm", 4)
    state, *_ = ui.generate(service, state, 2, 4, "", True)
    round_id, ids = state["round_id"], state["candidate_ids"]
    box = {"on": "3", "x": 0.25, "y": 0.5, "w": 0.5, "h": 0.25, "tag": "color-shift"}
    view = service.record_choice(round_id, ChoiceInput(ChoiceKind.PAIRWISE, [ids[0]], [ids[2]], regions=[box]))
    assert view.regions == 1
    with service.db.reads.begin() as s:
        assert s.get(Choice, view.choice_id).regions == [{**box, "position": 2}]
    with pytest.raises(InputError, match=r"region 1: the box .* leaves the image; regions must be a list of at "
                                         r"most 20 boxes \{\"on\": a position '1'..'3'"):
        service.record_choice(round_id, ChoiceInput(ChoiceKind.PAIRWISE, [ids[0]], [ids[2]],
                                                    regions=[{**box, "w": 0.9}]))

    # the page sends its boxes as JSON in a hidden field; the status counts them; malformed JSON is a message
    drawn = json.dumps([{"on": "2", "x": 0.1, "y": 0.1, "w": 0.2, "h": 0.2, "tag": None}, box])
    msg, _ = ui_choices.submit_pairwise(service, state, ["#1"], ["#2", "#3"], ["artefacts"], "", drawn)
    assert "2 preference pairs, 2 region marks" in msg and "replacing the earlier choice" in msg
    msg, _ = ui_choices.submit_pairwise(service, state, ["#1"], ["#2", "#3"], ["artefacts"], "", drawn)  # a double click
    with service.db.reads.begin() as s:
        live = latest_choice(s, round_id)
        assert [b["position"] for b in live.regions] == [1, 2] and live.regions[1]["tag"] == "color-shift"
        assert len(s.scalars(select(Choice).where(Choice.round_id == round_id)).all()) == 2
        rows = [r for r in preference_rows(s) if r["round_id"] == round_id]
        assert rows and all(r["regions"] == live.regions for r in rows)
        methods = dict(s.execute(select(Candidate.position, Candidate.method)
                                 .where(Candidate.round_id == round_id)).all())
        marks = [(c, b) for c, b in load_regions(s) if b in live.regions]
        assert [c for c, _ in marks] == [methods[1], methods[2]]
    for bad, needle in [("[not json", "malformed region marks"), ('{"on": "1"}', "malformed region marks"),
                        (json.dumps([{**box, "on": "4"}]), "region 1: .*a position")]:
        with pytest.raises(gr.Error, match=needle):
            ui_choices.submit_pairwise(service, state, ["#1"], ["#2"], [], "", bad)
    assert ui_choices.parse_regions("") is None and ui_choices.parse_regions("[]") is None
    assert all(t in ui_choices.region_tools_html() for t in ("region_toggle", "region_tag", "region_clear", "color-shift"))


def test_the_browser_keeps_its_sessions_and_the_page_continues_any_of_them(service):
    """Two sessions started in one browser: a reload resumes the current one at its latest round with the live
    choice's marks; the other one and an earlier round can be continued; a token the server does not know is
    forgotten; the session zip holds the record and the images."""
    import zipfile

    from feedback.web import ui_sessions

    quiet = lambda *a, **k: None  # noqa: E731 - no progress bar outside a page
    path = str(service.images.path_for(service.images.put_array(_image(32, seed=9))))
    out = ui_sessions.start_session(service, "Mo", None, True)
    first_state, browser = out[0], out[-1]
    state = ui.restore(service, first_state, path, "none", "nlm", 5, progress=quiet)[0]
    state = ui.generate(service, state, 2, 5, "", True, progress=quiet)[0]
    ui_choices.submit_pairwise(service, state, ["#2"], ["#1"], [])
    first_round = state["round_id"]
    out = ui_sessions.start_session(service, "Mo", browser, True)  # a second session in the same browser
    browser = out[-1]
    assert [s["id"] for s in browser["sessions"]] == [first_state["session_id"], out[0]["session_id"]]
    assert out[0]["rounds"] == [] and out[3] == []

    resumed = ui_sessions.resume(service, {**browser, "current": first_state["session_id"]}, True)
    assert resumed[0]["round_id"] == first_round and "Welcome back" in resumed[6]
    assert resumed[4]["value"] == ["#2"] and resumed[5]["value"] == ["#1"]  # the live choice's marks
    assert len(resumed[8]) == 1 and resumed[8][0][1].startswith("round 0 · chosen")
    switched = ui_sessions.switch_session(service, browser, out[0]["session_id"], True)
    assert switched[0] == {"session_id": out[0]["session_id"], "rounds": []} and switched[-1]["current"] == \
        out[0]["session_id"]
    opened = ui_sessions.open_round(service, resumed[0], browser, True, gr.SelectData(None, {"index": 0,
                                                                                            "value": None}))
    assert opened[0]["round_id"] == first_round
    with pytest.raises(gr.Error):
        ui_sessions.switch_session(service, browser, "f" * 32, True)
    stale = {"current": "x" * 32, "sessions": [{"id": "x" * 32, "token": "not-a-token", "at": "2026"}]}
    assert all(isinstance(v, type(gr.skip())) for v in ui_sessions.resume(service, stale, True))
    with zipfile.ZipFile(ui_sessions.session_zip(service, resumed[0])) as archive:
        record = json.loads(archive.read("session.json"))
        assert [r["round_id"] for r in record["rounds"]] == [first_round]
        assert record["rounds"][0]["live_choice_id"] and len(archive.namelist()) == 1 + 4  # input, start, 2 cands
        assert record["rounds"][0]["candidates"][0]["image"] + ".png" in " ".join(archive.namelist())


def _click(service, state, preferred, rejected, index):
    return ui_choices.click_tile(service, state, preferred, rejected, True, gr.SelectData(None, {"index": index, "value": None}))


def test_tile_clicks_cycle_the_mark(service):
    state = {"image_ids": [service.images.put_array(_image(24, seed=i)) for i in range(3)]}
    preferred, rejected, tiles = _click(service, state, [], [], 1)  # none -> preferred
    assert (preferred, rejected) == (["#2"], []) and [c for _, c in tiles] == ["#1", "#2 ✓ preferred", "#3"]
    preferred, rejected, tiles = _click(service, state, ["#3", "#2"], [], 1)  # preferred -> rejected
    assert (preferred, rejected) == (["#3"], ["#2"]) and tiles[1][1] == "#2 ✗ rejected"
    preferred, rejected, tiles = _click(service, state, preferred, ["#2", "#1"], 1)  # rejected -> none
    assert (preferred, rejected) == (["#3"], ["#1"]) and tiles[1][1] == "#2"
    with pytest.raises(gr.Error, match="no tile"):
        _click(service, state, [], [], 3)
    with pytest.raises(gr.Error, match="generate candidates first"):
        _click(service, {}, [], [], 0)


# ---------------------------------------------------------------------------------------- priors
@pytest.fixture(scope="module")
def two_priors(tmp_path_factory):
    """A service whose default prior and extra prior 'other' are two tiny priors with different weights."""
    folder = tmp_path_factory.mktemp("priors")
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        dirs.append(save_pixel_prior(folder / f"prior{seed}", build_pixel_unet(TINY_PRIOR), TINY_PRIOR))
    settings = EngineSettings(backbone="nlm", prior=str(dirs[0]), extra_priors=(("other", str(dirs[1])),),
                              round=RoundSettings(num_candidates=2, steps=2), refine=RefineSettings(steps=2))
    data = folder / "data"
    svc = FeedbackService(open_database(data_dir=data), str(data), settings)
    return svc, svc.create_session("Ada")[0]


def test_prior_is_chosen_per_round_and_recorded(two_priors):
    service, session_id = two_priors
    assert service.worker.prior_names() == ["default", "other"]
    with pytest.raises(InputError, match="unknown prior 'nope'; available: default, other"):
        service.start_round(session_id, _image(), prior="nope")
    assert service.worker._priors == {}  # a refused name loads nothing
    default = service.start_round(session_id, _image(), seed=3)
    other = service.start_round(session_id, _image(), seed=3, prior="other")
    assert set(service.worker._priors) == {"default", "other"}  # each loaded once, then cached
    loaded = service.worker.prior("other")
    assert service.worker.prior("other") is loaded
    facts = {name: service.worker.prior_facts(name) for name in ("default", "other")}
    assert facts["default"]["weights_hash"] != facts["other"]["weights_hash"]
    with service.db.sessions.begin() as s:
        for view, name in ((default, "default"), (other, "other")):
            rnd = s.get(Round, view.round_id)
            assert rnd.params["prior"] == name and rnd.prior_id == facts[name]["prior_id"]
            assert rnd.prior_weights_hash == facts[name]["weights_hash"]
    diffusion = lambda v: sorted(c.image_id for c in v.candidates if not c.is_restored)  # noqa: E731
    assert diffusion(default) != diffusion(other)  # same seed and start image, other weights

    # chosen after restore (the UI's way): the round records the prior its candidates used
    later = service.start_round(session_id, _image(), seed=3, generate=False)
    with pytest.raises(InputError, match="available: default, other"):
        service.generate_candidates(later.round_id, prior="nope")
    later = service.generate_candidates(later.round_id, prior="other")
    assert diffusion(later) == diffusion(other)
    service.record_choice(later.round_id, ChoiceInput(ChoiceKind.TIE))
    nxt = service.refine(later.round_id, generate_next=False).next_round
    with service.db.sessions.begin() as s:  # the next round keeps the prior
        rnd = s.get(Round, nxt.round_id)
        assert rnd.params["prior"] == "other" and rnd.prior_weights_hash == facts["other"]["weights_hash"]
    assert service.history(session_id)[-1]["prior"] == "other"


def test_page_upload_of_a_non_image_gets_the_decoders_message(service, tmp_path):
    """The page's image input hands the file to feedback.loop.uploads untouched: a text file, an archive or a
    decompression bomb gets the message naming what is allowed, not Pillow's error inside Gradio."""
    from gradio.data_classes import FileData

    state, _ = ui.sign_in(service, "Uploader", {})
    component = ui.UploadedImage(type="filepath")
    cases = {"notes.txt": b"just some text\n", "photos.zip": b"PK\x03\x04" + b"\0" * 40,
             "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        path = component.preprocess(FileData(path=str(tmp_path / name), orig_name=name))
        assert path == str(tmp_path / name)
        with pytest.raises(gr.Error) as info:
            ui.restore(service, state, path, "none", "nlm", 3)
        assert "PNG, JPEG" in info.value.message, info.value.message
    assert service.history(state["session_id"]) == []  # nothing recorded for refused uploads
