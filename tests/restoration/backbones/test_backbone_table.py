"""evaluate --nr-metrics (a no-reference score, no download) and scripts/backbone_table.py, the designer's table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restoration.evaluate import EvalConfig, main, run_evaluation

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
import backbone_table


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir()
    yy, xx = np.mgrid[0:40, 0:48] / 48.0
    for i in range(n):
        img = np.stack([xx, yy, 0.5 + 0.3 * np.sin(6 * (xx + yy) + i)], -1)
        img[10:25, 12 + i * 5 : 30 + i * 5] = [0.9, 0.2, 0.1]
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def _report(photos: Path, backbone: str, spec: str, size: int = 32, nr=("piqe",)) -> dict:
    return run_evaluation(EvalConfig(backbone, spec, photos, size=size, seed=0, nr_metrics=nr))


def test_nr_metrics_in_the_report(tmp_path):
    report = _report(_photos(tmp_path / "p"), "nlm", "noise:25")
    assert report["nr_metrics"] == ["piqe"]
    for row in report["images"]:
        assert all(isinstance(row[k], float) for k in ("clean_piqe", "input_piqe", "piqe"))
        assert row["piqe"] != row["input_piqe"]
    assert report["mean"]["piqe"] == pytest.approx(sum(r["piqe"] for r in report["images"]) / 2)
    plain = _report(tmp_path / "p", "nlm", "noise:25", nr=())
    assert plain["nr_metrics"] == [] and "piqe" not in plain["mean"]


def test_nr_metrics_refuse_what_cannot_be_scored(tmp_path, capsys):
    args = ["--backbone", "nlm", "--degradation", "noise:25", "--images", str(_photos(tmp_path / "p")), "--size", "32"]
    assert main([*args, "--nr-metrics", "psnr"]) == 2
    assert "'psnr' is a full-reference metric" in capsys.readouterr().err
    assert main([*args, "--nr-metrics", "piqee"]) == 2
    assert "did you mean 'piqe'" in capsys.readouterr().err


def test_table_from_reports(tmp_path, capsys):
    photos = _photos(tmp_path / "p")
    paths = []
    for spec in ("noise:25", "sr:2"):
        for b in ("bicubic", "classical", "nlm"):
            path = tmp_path / f"{spec.replace(':', '_')}_{b}.json"
            path.write_text(json.dumps(_report(photos, b, spec)))
            paths.append(path)
    table = backbone_table.render_table(backbone_table.load_reports(paths))
    lines = table.splitlines()
    assert lines[0].startswith("Mean over 2 photos at 32 px (seed 0); the photos themselves score PIQE")
    rows = [line.split(" | ") for line in lines if line.startswith("| noise:25")]
    assert [r[1] for r in rows] == ["*input*", "classical (told)", "bicubic (told)", "nlm (told)"]
    psnr = [float(r[2].strip("*")) for r in rows[1:]]
    # the best PSNR is bold (classical told noise runs nlm: a tie, both bold), no other
    assert [r[2].startswith("**") for r in rows[1:]] == [v == max(psnr) for v in psnr] and min(psnr) < max(psnr)
    assert not rows[0][2].startswith("**")  # the input is not a restoration
    assert any(line.startswith("| sr:2 | *input*") for line in lines)

    doc = tmp_path / "DOC.md"
    doc.write_text(f"# t\n\nbefore\n{backbone_table.BEGIN}\nstale rows\n{backbone_table.END}\nafter\n")
    assert backbone_table.main([*map(str, paths), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "stale rows" not in text and text.startswith("# t\n\nbefore\n") and text.endswith("after\n")
    assert table in text and capsys.readouterr().out == table


def test_table_refuses_reports_it_cannot_compare(tmp_path, capsys):
    photos = _photos(tmp_path / "p")
    good, plain, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    good.write_text(json.dumps(_report(photos, "nlm", "noise:25")))
    plain.write_text(json.dumps(_report(photos, "nlm", "noise:25", nr=())))
    other.write_text(json.dumps(_report(photos, "bicubic", "noise:25", size=24)))
    assert backbone_table.main([str(good), str(plain)]) == 2
    assert "made without --nr-metrics piqe" in capsys.readouterr().err
    assert backbone_table.main([str(good), str(other)]) == 2
    assert "other photos, size or seed" in capsys.readouterr().err
    doc = tmp_path / "DOC.md"
    doc.write_text("no markers\n")
    assert backbone_table.main([str(good), "--doc", str(doc)]) == 2
    assert "needs one '<!-- backbone-table:begin -->' line" in capsys.readouterr().err
