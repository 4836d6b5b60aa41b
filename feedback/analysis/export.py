"""Export the preference record as an image-conditioned preference dataset, one row per preference pair.

Variants:
  ttpo      degraded input, initial restoration, chosen, rejected (and the clean image when the
            degradation is synthetic), label (1.0 chosen beats rejected, 0.5 tie), degradation, annotator
            pseudonym, study, condition, round, seeds and parameters, and the vote's region marks (`regions`,
            boxes in [0, 1] image coordinates on the candidate at their `position`; `feedback.studies.regions`).
  pickapic  the columns the Pick-a-Pic / Diffusion-DPO training scripts read: caption (the degradation in
            words), jpg_0, jpg_1 (image bytes, in display order), label_0 (1 if jpg_0 was preferred, 0 if
            jpg_1, 0.5 tie), label_1 = 1 - label_0; plus the degraded input as the conditioning image.
Formats:
  parquet   OUTDIR/train.parquet; ttpo images are structs {bytes, path} tagged as `datasets.Image`, so
            `datasets.load_dataset("parquet", data_files=...)` decodes them; pickapic images are raw bytes.
  jsonl     OUTDIR/train.jsonl with image columns holding paths relative to OUTDIR (images/<id>.png).

Only each round's latest choice is exported; `export_info.json` says how many superseded (corrected) choices were
left out. The dataset is written to a temporary folder beside OUTDIR and renamed into place, so a failure leaves
nothing half-written.

    python -m feedback.analysis.export --db sqlite:///data/ttpo.sqlite3 --format parquet --out out/prefs
    (--data-dir defaults to the SQLite file's folder; name it for PostgreSQL)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from feedback.record.choices import superseded_choices
from feedback.record.errors import InputError, NotFound
from feedback.record.images import ImageStore
from feedback.record.models import Annotator, Choice, SessionRow
from feedback.record.store import export_pairs

FORMATS = ("parquet", "jsonl")
VARIANTS = ("ttpo", "pickapic")
ROWS_PER_BATCH = 256
#: Degradation names of `restoration.degradations` in words, with their argument names (spec order).
DEGRADATION_WORDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "noise": ("gaussian noise", ("sigma",)),
    "blur": ("gaussian blur", ("sigma",)),
    "motion": ("motion blur", ("length", "angle")),
    "sr": ("bicubic downsampling", ("scale",)),
    "jpeg": ("jpeg compression", ("quality",)),
    "rain": ("rain streaks", ("density", "length", "angle")),
    "snow": ("snow", ("density", "size")),
    "haze": ("haze", ("beta", "airlight")),
    "lowlight": ("low light", ("scale", "gamma", "sigma")),
}
TTPO_IMAGES = ("degraded", "restored", "chosen", "rejected", "gt")
PICKAPIC_IMAGES = ("jpg_0", "jpg_1", "degraded")


@dataclass(frozen=True)
class ExportResult:
    """Where the dataset went and what it holds."""

    out_dir: Path
    data_file: Path
    rows: int
    variant: str
    format: str
    superseded_choices: int = 0


def caption(spec: str | None) -> str:
    """The degradation in words: 'noise:25' -> 'restore a photo degraded by gaussian noise sigma 25'."""
    if spec is None or not spec.strip() or spec.strip().lower() == "none":
        return "restore a photo"
    phrases = []
    for step in spec.strip().split("+"):
        name, _, args = step.strip().partition(":")
        words, arg_names = DEGRADATION_WORDS.get(name.strip(), (name.strip(), ()))
        values = [a.strip() for a in args.split(",") if a.strip()] if args else []
        named = [f"{arg_names[i] if i < len(arg_names) else 'arg'} {_tidy(v)}" for i, v in enumerate(values)]
        phrases.append(" ".join([words, *named]))
    return "restore a photo degraded by " + ", then ".join(phrases)


def _tidy(number: str) -> str:
    try:
        value = float(number)
    except ValueError:
        return number
    return str(int(value)) if value.is_integer() else f"{value:g}"


# --------------------------------------------------------------------------------------------- rows
def preference_rows(s: Session, *, human_only: bool = False, study_id: str | None = None) -> Iterator[dict[str, Any]]:
    """One dict per preference pair (ttpo columns; images as ids): `store.export_pairs` plus the annotator's
    pseudonym and the session's study and condition where the round has none, and the vote's region marks
    (`regions`: [{"on", "position", "x", "y", "w", "h", "tag"}] on the candidate at `position`, [] without)."""
    sessions = {sid: (pseudonym, study, condition) for sid, pseudonym, study, condition in s.execute(
        select(SessionRow.id, Annotator.pseudonym, SessionRow.study_id, SessionRow.condition)
        .join(Annotator, SessionRow.annotator_id == Annotator.id))}
    regions = dict(s.execute(select(Choice.id, Choice.regions).where(Choice.regions.is_not(None))).all())
    for pair in export_pairs(s):
        if human_only and pair["selector"] != "human":
            continue
        pseudonym, session_study, session_condition = sessions[pair["session_id"]]
        study = pair["study_id"] or session_study
        if study_id is not None and study != study_id:
            continue
        yield {
            "pair_id": pair["pair_id"], "choice_id": pair["choice_id"], "round_id": pair["round_id"],
            "round_index": pair["round_index"], "parent_round_id": pair["parent_round_id"],
            "session_id": pair["session_id"], "annotator": pseudonym, "selector": pair["selector"],
            "study_id": study, "condition": pair["condition"] or session_condition or pair["backbone_name"],
            "kind": pair["kind"], "label": float(pair["label"]), "reason_tags": pair["reason_tags"],
            "decision_ms": pair["decision_ms"],
            "degraded": pair["degraded_image"] or pair["source_image"], "restored": pair["restored_image"],
            "chosen": pair["chosen_image"], "rejected": pair["rejected_image"], "gt": pair["gt_image"],
            "degradation": pair["degradation_spec"], "degradation_seed": pair["degradation_seed"],
            "caption": caption(pair["degradation_spec"]), "origin": pair["origin"],
            **{f"{side}_{key}": pair[f"{side}_{key}"] for side in ("chosen", "rejected")
               for key in ("candidate_id", "method", "seed", "strength", "position", "is_restored")},
            "chosen_scores": json.dumps(pair["chosen_scores"], sort_keys=True),
            "rejected_scores": json.dumps(pair["rejected_scores"], sort_keys=True),
            "backbone_name": pair["backbone_name"], "backbone_weights_hash": pair["backbone_weights_hash"],
            "prior_id": pair["prior_id"], "prior_weights_hash": pair["prior_weights_hash"],
            "params": json.dumps(pair["params"], sort_keys=True), "seeds": pair["seeds"],
            "code_version": pair["code_version"], "created_at": pair["created_at"],
            "regions": [dict(box) for box in regions.get(pair["choice_id"]) or []],
        }


def pickapic_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ttpo row in Pick-a-Pic columns: jpg_0 is the image shown first (lower position)."""
    chosen_first = row["chosen_position"] <= row["rejected_position"]
    first, second = ("chosen", "rejected") if chosen_first else ("rejected", "chosen")
    label_0 = 0.5 if row["label"] != 1.0 else (1.0 if chosen_first else 0.0)
    return {
        "caption": row["caption"], "jpg_0": row[first], "jpg_1": row[second],
        "label_0": label_0, "label_1": 1.0 - label_0, "are_different": row[first] != row[second],
        "has_label": True, "image_0_uid": row[first], "image_1_uid": row[second],
        "best_image_uid": "" if label_0 == 0.5 else row["chosen"],
        "model_0": row[f"{first}_method"], "model_1": row[f"{second}_method"],
        "user_id": row["annotator"], "ranking_id": row["choice_id"], "pair_id": row["pair_id"],
        "degraded": row["degraded"], "degradation": row["degradation"], "study_id": row["study_id"],
        "condition": row["condition"], "round_id": row["round_id"], "created_at": row["created_at"],
    }


# ------------------------------------------------------------------------------------------ writers
def _arrow_schema(variant: str) -> Any:
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    text, number, integer = pa.string(), pa.float64(), pa.int64()
    if variant == "pickapic":
        fields = [("caption", text), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()), ("label_0", number),
                  ("label_1", number), ("are_different", pa.bool_()), ("has_label", pa.bool_()),
                  ("image_0_uid", text), ("image_1_uid", text), ("best_image_uid", text), ("model_0", text),
                  ("model_1", text), ("user_id", text), ("ranking_id", text), ("pair_id", text),
                  ("degraded", pa.binary()), ("degradation", text), ("study_id", text), ("condition", text),
                  ("round_id", text), ("created_at", text)]
        return pa.schema(fields)
    types = {"round_index": integer, "label": number, "reason_tags": pa.list_(text), "decision_ms": integer,
             "degradation_seed": integer, "chosen_seed": integer, "rejected_seed": integer,
             "chosen_strength": number, "rejected_strength": number, "chosen_position": integer,
             "rejected_position": integer, "chosen_is_restored": pa.bool_(), "rejected_is_restored": pa.bool_(),
             "seeds": pa.list_(integer), **{name: image for name in TTPO_IMAGES},
             "regions": pa.list_(pa.struct([("on", text), ("position", integer), ("x", number), ("y", number),
                                            ("w", number), ("h", number), ("tag", text)]))}
    fields = [(name, types.get(name, text)) for name in _TTPO_COLUMNS]
    features = {name: {"_type": "Image"} for name in TTPO_IMAGES}  # read by datasets.Features.from_arrow_schema
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


_TTPO_COLUMNS = (
    "pair_id", "choice_id", "round_id", "round_index", "parent_round_id", "session_id", "annotator", "selector",
    "study_id", "condition", "kind", "label", "reason_tags", "decision_ms", *TTPO_IMAGES, "degradation",
    "degradation_seed", "caption", "origin",
    *(f"{side}_{key}" for side in ("chosen", "rejected")
      for key in ("candidate_id", "method", "seed", "strength", "position", "is_restored")),
    "chosen_scores", "rejected_scores", "backbone_name", "backbone_weights_hash", "prior_id", "prior_weights_hash",
    "params", "seeds", "code_version", "created_at", "regions",
)


def _image_bytes(images: ImageStore, image_id: str | None, row: dict[str, Any]) -> bytes | None:
    if image_id is None:
        return None
    try:
        return images.get_bytes(image_id)
    except NotFound:
        raise InputError(f"image {image_id} of preference pair {row['pair_id']} is missing from {images.root}; "
                         "export with the --data-dir the app wrote to") from None


def _write_parquet(rows: Iterator[dict[str, Any]], images: ImageStore, variant: str, path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema(variant)
    names = PICKAPIC_IMAGES if variant == "pickapic" else TTPO_IMAGES
    count, batch = 0, []
    with pq.ParquetWriter(path, schema) as writer:
        for row in rows:
            for name in names:
                data = _image_bytes(images, row[name], row)
                if variant == "pickapic":
                    row[name] = data
                else:
                    row[name] = None if data is None else {"bytes": data, "path": f"{row[name]}.png"}
            batch.append(row)
            count += 1
            if len(batch) >= ROWS_PER_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return count


def _write_jsonl(rows: Iterator[dict[str, Any]], images: ImageStore, variant: str, path: Path) -> int:
    names = PICKAPIC_IMAGES if variant == "pickapic" else TTPO_IMAGES
    image_dir = path.parent / "images"
    image_dir.mkdir()
    count = 0
    with path.open("w") as handle:
        for row in rows:
            for name in names:
                image_id = row[name]
                if image_id is None:
                    continue
                target = image_dir / f"{image_id}.png"
                if not target.exists():
                    target.write_bytes(_image_bytes(images, image_id, row))
                row[name] = f"images/{image_id}.png"
            handle.write(json.dumps(row, sort_keys=False, allow_nan=False) + "\n")
            count += 1
    return count


def export_dataset(s: Session, images: ImageStore, out_dir: str | os.PathLike[str], *, format: str = "parquet",
                   variant: str = "ttpo", human_only: bool = False, study_id: str | None = None,
                   overwrite: bool = False) -> ExportResult:
    """Write the preference dataset to `out_dir` (created; an existing one only with `overwrite`)."""
    if format not in FORMATS:
        raise InputError(f"unknown format {format!r}; allowed: {', '.join(FORMATS)}")
    if variant not in VARIANTS:
        raise InputError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; choose a folder for --out")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise InputError(f"{out} already exists and is not empty; choose a new or empty --out folder or pass "
                         "--overwrite")
    rows = preference_rows(s, human_only=human_only, study_id=study_id)
    first = next(rows, None)
    if first is None:
        what = "human " if human_only else ""
        where = f" in study {study_id!r}" if study_id is not None else ""
        raise InputError(f"no {what}preference pairs{where} to export: the database has no recorded choices yet")
    rows = _chain(first, rows)
    if variant == "pickapic":
        rows = (pickapic_row(r) for r in rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        data_name = f"train.{format}"
        writer = _write_parquet if format == "parquet" else _write_jsonl
        count = writer(rows, images, variant, tmp / data_name)
        superseded = superseded_choices(s, study_id=study_id)
        info = {"rows": count, "variant": variant, "format": format, "data_file": data_name,
                "human_only": human_only, "study_id": study_id, "superseded_choices": superseded}
        (tmp / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists() and any(out.iterdir()):  # overwrite: move the old export aside, the rename is the switch
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)  # onto an empty folder too (rename(2) replaces an empty directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out_dir=out, data_file=out / data_name, rows=count, variant=variant, format=format,
                        superseded_choices=superseded)


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


def default_data_dir(url: str | None) -> Path:
    """The app's data folder when only the database is named: the folder of a SQLite file (where the app keeps
    the database beside images/). Other databases do not say where the images are: InputError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from feedback.record.db import DB_URL_ENV

    url = url or os.environ.get(DB_URL_ENV)
    if not url:
        raise InputError(f"no database given: pass --db URL (or set ${DB_URL_ENV}) or --data-dir DIR")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(f"--db {url[:80]!r} is not a database URL (e.g. sqlite:///data/ttpo.sqlite3)") from None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        raise InputError(f"a {parsed.get_backend_name()} database does not say where its images are; pass the "
                         "app's --data-dir (the folder that holds images/)")
    return Path(parsed.database).resolve().parent


def main(argv: Sequence[str] | None = None) -> None:
    from feedback.analysis.report import open_existing_database
    from feedback.record.db import DB_URL_ENV

    parser = argparse.ArgumentParser(prog="python -m feedback.analysis.export", description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help=f"database URL (default: ${DB_URL_ENV} or DATA_DIR)")
    parser.add_argument("--data-dir", default=None,
                        help="the app's data folder (holds images/; default: the SQLite file's folder)")
    parser.add_argument("--format", default="parquet", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--variant", default="ttpo", help=f"one of {', '.join(VARIANTS)}")
    parser.add_argument("--out", required=True, help="output folder (new or empty, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--human-only", action="store_true", help="leave out choices made by metric selectors")
    parser.add_argument("--study", default=None, help="only pairs of this study id")
    args = parser.parse_args(argv)
    try:
        if args.format not in FORMATS:  # before touching the database
            raise InputError(f"unknown format {args.format!r}; allowed: {', '.join(FORMATS)}")
        if args.variant not in VARIANTS:
            raise InputError(f"unknown variant {args.variant!r}; allowed: {', '.join(VARIANTS)}")
        data_dir = args.data_dir if args.data_dir is not None else default_data_dir(args.db)
        if not (Path(data_dir) / "images").is_dir():
            raise InputError(f"{data_dir} has no images/ folder; pass the app's --data-dir")
        database = open_existing_database(args.db, data_dir)
        try:
            with database.sessions() as s:
                result = export_dataset(s, ImageStore(data_dir), args.out, format=args.format,
                                        variant=args.variant, human_only=args.human_only, study_id=args.study,
                                        overwrite=args.overwrite)
        finally:
            database.engine.dispose()
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")
    except SQLAlchemyError as exc:
        parser.exit(2, f"error: cannot read the preference database ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0]}); is it migrated? python -m feedback.record.db upgrade --db URL\n")
    print(f"wrote {result.rows} {result.variant} rows to {result.data_file} ({result.superseded_choices} "
          "superseded choices left out: a later choice on the same round replaced each)")


if __name__ == "__main__":
    main()
