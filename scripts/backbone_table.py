"""The study designer's table: backbones side by side per degradation, from `restoration.evaluate` JSON reports.

    python scripts/backbone_table.py docs/results/backbones/*.json [--doc docs/BACKBONES.md]

Every report must come from `evaluate --nr-metrics piqe` on the same photos, size and seed. One row per backbone and
degradation (mean over the photos): PSNR, SSIM, hf_ratio (high-frequency energy over the photo's), PIQE (no reference,
lower is better) and seconds per image; each degradation starts with the degraded input's own figures, and the
photos' own PIQE is said once. Best PSNR, SSIM and PIQE per degradation in bold. Prints the Markdown table; with
--doc it replaces the text between the doc's `<!-- backbone-table:begin -->` and `<!-- backbone-table:end -->` lines.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- backbone-table:begin -->", "<!-- backbone-table:end -->"
NR_METRIC = "piqe"
#: Order of the rows inside a degradation (others follow by name).
ORDER = ("sipl", "sipl_ablation", "classical", "realesrgan")
COLUMNS = ("PSNR (dB)", "SSIM", "hf_ratio", "PIQE (lower better)", "s / image")


def load_reports(paths: list[Path]) -> list[dict[str, Any]]:
    """The reports, checked to share photos, size and seed and to carry the no-reference metric."""
    reports = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable evaluate JSON report ({exc})") from None
        if NR_METRIC not in report.get("nr_metrics", []):
            raise ValueError(f"{path}: made without --nr-metrics {NR_METRIC}; rerun evaluate with it")
        reports.append(report)
    if not reports:
        raise ValueError("no reports given")
    for path, report in zip(paths, reports):
        if _setting(report) != _setting(reports[0]):
            raise ValueError(f"{path}: other photos, size or seed than {paths[0]}; a table compares like with like")
    return reports


def _setting(report: dict[str, Any]) -> tuple[int, int, list[str]]:
    return report["size"], report["seed"], [i["name"] for i in report["images"]]


def _cell(value: float, digits: int, best: bool) -> str:
    text = f"{value:.{digits}f}"
    return f"**{text}**" if best else text


def render_table(reports: list[dict[str, Any]]) -> str:
    """Markdown: one block of rows per degradation (in the order first seen), the input's figures first."""
    specs = list(dict.fromkeys(r["degradation"] for r in reports))
    rank = {name: i for i, name in enumerate(ORDER)}
    n, size = len(reports[0]["images"]), reports[0]["size"]
    clean = sum(i[f"clean_{NR_METRIC}"] for i in reports[0]["images"]) / n
    lines = [f"Mean over {n} photos at {size} px (seed {reports[0]['seed']}); the photos themselves score PIQE "
             f"{clean:.1f}.", "Bold: the best restoration per degradation.", "",
             "| degradation | backbone | " + " | ".join(COLUMNS) + " |", "|" + " --- |" * (len(COLUMNS) + 2)]
    for spec in specs:
        rows = sorted((r for r in reports if r["degradation"] == spec),
                      key=lambda r: (rank.get(r["backbone"], len(ORDER)), r["backbone"]))
        m = rows[0]["mean"]
        lines.append(f"| {spec} | *input* | {m['input_psnr']:.2f} | {m['input_ssim']:.4f} | "
                     f"{m['input_hf_ratio']:.3f} | {m[f'input_{NR_METRIC}']:.1f} | |")
        best_psnr = max(r["mean"]["psnr"] for r in rows)
        best_ssim = max(r["mean"]["ssim"] for r in rows)
        best_nr = min(r["mean"][NR_METRIC] for r in rows)
        for r in rows:
            m = r["mean"]
            name = r["backbone"] + (" (told)" if r.get("informed") else "")
            lines.append(f"| {spec} | {name} | {_cell(m['psnr'], 2, m['psnr'] == best_psnr)} | "
                         f"{_cell(m['ssim'], 4, m['ssim'] == best_ssim)} | {m['hf_ratio']:.3f} | "
                         f"{_cell(m[NR_METRIC], 1, m[NR_METRIC] == best_nr)} | {m['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def replace_in_doc(doc: Path, table: str) -> None:
    """Put `table` between the BEGIN and END marker lines of `doc`."""
    text = doc.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{doc}: needs one '{BEGIN}' line followed by one '{END}' line")
    head, rest = text.split(BEGIN)
    _old, tail = rest.split(END)
    doc.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="evaluate --json --nr-metrics piqe reports")
    p.add_argument("--doc", type=Path, help="Markdown file whose marked table to replace")
    a = p.parse_args(argv)
    try:
        table = render_table(load_reports(a.reports))
        if a.doc:
            replace_in_doc(a.doc, table)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
