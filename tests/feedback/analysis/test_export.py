"""Preference dataset export: Parquet loads with `datasets`, Pick-a-Pic columns, JSONL with image files."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from feedback.analysis import export
from feedback.record.db import open_database
from feedback.record.errors import InputError
from feedback.record.images import ImageStore

try:
    from tests.feedback.analysis.test_analysis import SPEC, Study, build_study
except ImportError:  # tests/ is not importable as a package: pytest put tests/ itself on sys.path
    from test_analysis import SPEC, Study, build_study

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
PARTICIPANTS = {"careful": 1.0, "lefty": "left"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    built = build_study(tmp_path_factory.mktemp("export"), units_per_pair=1, repeats=2, participants=PARTICIPANTS)
    yield built
    built.db.engine.dispose()


def all_pairs(study: Study) -> int:
    return study.human_pairs + 1  # plus the metric selector's pair


def run_export(study: Study, out: Path, **kwargs) -> export.ExportResult:
    with study.db.sessions() as s:
        return export.export_dataset(s, ImageStore(study.data_dir), out, **kwargs)


def load_parquet(path: Path, tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def test_parquet_loads_with_datasets_and_decodes_images(study: Study, tmp_path: Path) -> None:
    result = run_export(study, tmp_path / "ttpo")
    assert result.rows == all_pairs(study) and result.data_file.name == "train.parquet"
    ds = load_parquet(result.data_file, tmp_path)
    assert len(ds) == all_pairs(study)
    assert sorted(set(ds["label"])) == [0.5, 1.0] and ds["label"].count(0.5) == 1
    row = ds[0]
    for name in ("degraded", "restored", "chosen", "rejected", "gt"):
        assert isinstance(row[name], Image.Image) and row[name].size == (8, 8), name
    assert row["caption"] == "restore a photo degraded by gaussian noise sigma 25"
    assert row["degradation"] == SPEC and row["study_id"] == "pilot" and row["condition"] == "A/B"
    assert row["annotator"] in study.pseudonyms.values() and row["seeds"] == [7]
    assert json.loads(row["params"]) == {"strengths": [0.2]} and "piqe" in json.loads(row["chosen_scores"])
    assert set(ds["selector"]) == {"human", "piqe"}
    # the chosen image's bytes are the stored PNG, byte for byte
    table = pq.read_table(result.data_file, columns=["chosen"])
    image_id = table["chosen"][0]["path"].as_py().removesuffix(".png")
    assert table["chosen"][0]["bytes"].as_py() == ImageStore(study.data_dir).get_bytes(image_id)
    info = json.loads((result.out_dir / "export_info.json").read_text())
    assert info["rows"] == all_pairs(study) and info["variant"] == "ttpo"


def test_pickapic_variant_columns_and_labels(study: Study, tmp_path: Path) -> None:
    result = run_export(study, tmp_path / "pick", variant="pickapic", human_only=True)
    assert result.rows == study.human_pairs
    table = pq.read_table(result.data_file)
    assert {"caption", "jpg_0", "jpg_1", "label_0", "label_1"} <= set(table.column_names)
    rows = table.to_pylist()
    lefty = study.pseudonyms["lefty"]
    # jpg_0 is the image shown first: the left-picker's label_0 is always 1
    assert {r["label_0"] for r in rows if r["user_id"] == lefty} == {1.0}
    careful = [r["label_0"] for r in rows if r["user_id"] != lefty]
    assert set(careful) == {0.0, 0.5, 1.0}
    assert all(r["label_0"] + r["label_1"] == 1.0 for r in rows)
    first = rows[0]
    assert Image.open(io.BytesIO(first["jpg_0"])).size == (8, 8)
    assert Image.open(io.BytesIO(first["degraded"])).size == (8, 8)
    assert first["caption"].startswith("restore a photo degraded by gaussian noise")
    ds = load_parquet(result.data_file, tmp_path)
    assert len(ds) == study.human_pairs and set(ds.column_names) == set(table.column_names)


def test_jsonl_references_existing_files(study: Study, tmp_path: Path) -> None:
    result = run_export(study, tmp_path / "jsonl", format="jsonl")
    lines = result.data_file.read_text().splitlines()
    assert len(lines) == all_pairs(study)
    for line in lines:
        row = json.loads(line)
        for name in ("degraded", "restored", "chosen", "rejected"):
            path = result.out_dir / row[name]
            assert path.is_file() and path.read_bytes().startswith(b"\x89PNG")
        assert row["label"] in (0.5, 1.0)


def test_errors_leave_nothing_behind(study: Study, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown format 'csv'; allowed: parquet, jsonl"):
        run_export(study, tmp_path / "bad", format="csv")
    with pytest.raises(InputError, match="unknown variant"):
        run_export(study, tmp_path / "bad", variant="hpsv2")
    run_export(study, tmp_path / "once")
    with pytest.raises(InputError, match="already exists"):
        run_export(study, tmp_path / "once")
    assert run_export(study, tmp_path / "once", overwrite=True, format="jsonl").rows == all_pairs(study)
    assert sorted(p.name for p in (tmp_path / "once").iterdir()) == ["export_info.json", "images", "train.jsonl"]
    # a missing image fails the export part-way: no output folder, no temporary folder left
    broken = tmp_path / "broken-data"
    broken.mkdir()
    with study.db.sessions() as s, pytest.raises(InputError, match="missing from"):
        export.export_dataset(s, ImageStore(broken), tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-data", "once"]
    empty_url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    empty = open_database(empty_url)
    with empty.sessions() as s, pytest.raises(InputError, match="no preference pairs"):
        export.export_dataset(s, ImageStore(broken), tmp_path / "nothing")
    empty.engine.dispose()
    assert not (tmp_path / "nothing").exists()


def test_cli(study: Study, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    export.main(["--db", study.url, "--data-dir", str(study.data_dir), "--format", "parquet", "--out", str(out),
                 "--variant", "pickapic"])
    assert f"wrote {all_pairs(study)} pickapic rows" in capsys.readouterr().out
    assert pq.read_table(out / "train.parquet").num_rows == all_pairs(study)
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--db", study.url, "--data-dir", str(study.data_dir), "--format", "xml", "--out",
                     str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "allowed: parquet, jsonl" in capsys.readouterr().err


def test_caption() -> None:
    assert export.caption("blur:2.0+jpeg:30") == ("restore a photo degraded by gaussian blur sigma 2, "
                                                 "then jpeg compression quality 30")
    assert export.caption(None) == "restore a photo"
    assert export.caption("motion:15,45") == "restore a photo degraded by motion blur length 15 angle 45"


def corrected_round(data_dir: Path) -> tuple[str, list[str]]:
    """A database in `data_dir` (as the app keeps it) with one round whose choice was corrected once:
    -> (database URL, the candidate ids); the first choice preferred 0 over 1, the second 1 over 0."""
    import numpy as np

    from feedback.record import choices, store
    from feedback.record.choices import ChoiceInput, ChoiceKind
    from feedback.record.store import CandidateSpec

    data_dir.mkdir(parents=True)
    url = f"sqlite:///{data_dir / 'ttpo.sqlite3'}"
    db = open_database(url)
    images = ImageStore(data_dir)
    ids = [images.put_array(np.full((8, 8, 3), v, np.uint8)) for v in (10, 20, 30)]
    with db.sessions.begin() as s:
        session = store.create_annotator_session(s, "a" * 64, "b" * 64)
        src = store.add_source_image(s, image_hash=ids[0], width=8, height=8, origin="upload", session_id=session.id,
                                     degraded_image_hash=ids[0])
        rnd = store.create_round(s, store.RoundRecord(session_id=session.id, source_image_id=src.id, backbone_name="nlm",
                                                   code_version="t", device="cpu", dtype="float32",
                                                   restored_image_hash=ids[1]))
        cands = [c.id for c in store.add_candidates(s, rnd.id, [CandidateSpec(image_hash=i, method="m")
                                                                for i in ids[1:]])]
        choices.record_choice(s, rnd.id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[0]], [cands[1]],
                                                     idempotency_key="first"))
    with db.sessions.begin() as s:
        choices.record_choice(s, rnd.id, ChoiceInput(ChoiceKind.PAIRWISE, [cands[1]], [cands[0]],
                                                     idempotency_key="second"))
    db.engine.dispose()
    return url, cands


def test_cli_reads_images_beside_the_sqlite_file_writes_into_an_empty_out_and_counts_superseded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, cands = corrected_round(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine
    export.main(["--db", url, "--format", "jsonl", "--out", str(out)])
    said = capsys.readouterr().out
    assert "wrote 1 ttpo rows" in said and "1 superseded choices left out" in said
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [(r["chosen_candidate_id"], r["rejected_candidate_id"]) for r in rows] == [(cands[1], cands[0])]
    assert json.loads((out / "export_info.json").read_text())["superseded_choices"] == 1
    for args, needle in ((["--db", url, "--out", str(out)], "is not empty"),  # not empty any more
                         (["--db", url, "--out", str(out / "train.jsonl")], "is not a folder"),
                         (["--db", "postgresql+psycopg://u@h/db", "--out", str(tmp_path / "pg")], "--data-dir"),
                         (["--db", "not a url", "--out", str(tmp_path / "x")], "not a database URL")):
        with pytest.raises(SystemExit) as exit_info:
            export.main(args)
        assert exit_info.value.code == 2 and needle in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]  # nothing half-written
