"""A session as one zip: every image it made or was given, and a JSON record of its rounds.

    session.json            {"session": {...}, "rounds": [{round, source, candidates, choices, refinements}]}
    images/<image id>.png   the upload, degraded input, ground truth, start images, candidates and refined images

Choices are all there, superseded ones with `superseded_at`; each round says which choice is live. Like
`feedback.record.store`, `session_record` takes a Session and never opens, commits or closes one. `write_session_zip`
writes to a temporary file beside the target and renames it into place: a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback.record.errors import InputError, NotFound
from feedback.record.images import ImageStore
from feedback.record.models import Refinement, Round, SessionRow


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def session_record(s: Session, session_id: str) -> tuple[dict[str, Any], list[str]]:
    """(the JSON record of a session, the ids of every image it names, in first-named order)."""
    row = s.get(SessionRow, session_id)
    if row is None:
        raise NotFound(f"no session with id {session_id[:80]!r}")
    images: dict[str, None] = {}

    def image(image_id: str | None) -> str | None:
        if image_id:
            images.setdefault(image_id)
        return image_id

    rounds = []
    for rnd in s.scalars(select(Round).where(Round.session_id == session_id)
                         .order_by(Round.created_at, Round.round_index)):
        src = rnd.source_image
        refinements = s.scalars(select(Refinement).where(Refinement.round_id == rnd.id)
                                .order_by(Refinement.created_at)).all()
        live = [c.id for c in rnd.choices if c.superseded_at is None]
        rounds.append({
            "round_id": rnd.id, "round_index": rnd.round_index, "parent_round_id": rnd.parent_round_id,
            "status": rnd.status, "created_at": _iso(rnd.created_at), "backbone": rnd.backbone_name,
            "backbone_weights_hash": rnd.backbone_weights_hash, "prior_id": rnd.prior_id,
            "prior_weights_hash": rnd.prior_weights_hash, "params": dict(rnd.params), "seeds": list(rnd.seeds),
            "code_version": rnd.code_version, "device": rnd.device, "dtype": rnd.dtype,
            "stage_seconds": dict(rnd.stage_seconds), "start_image": image(rnd.restored_image_hash),
            "source": {"id": src.id, "image": image(src.image_hash), "degraded_image": image(src.degraded_image_hash),
                       "gt_image": image(src.gt_image_hash), "width": src.width, "height": src.height,
                       "origin": src.origin, "degradation_spec": src.degradation_spec,
                       "degradation_seed": src.degradation_seed},
            "candidates": [{"id": c.id, "image": image(c.image_hash), "position": c.position, "seed": c.seed,
                            "strength": c.strength, "method": c.method, "is_restored": c.is_restored,
                            "scores": dict(c.scores)} for c in rnd.candidates],
            "live_choice_id": live[0] if live else None,
            "choices": [{"id": c.id, "kind": c.kind, "preferred": c.preferred_ids, "rejected": c.rejected_ids,
                         "reason_tags": list(c.reason_tags), "decision_ms": c.decision_ms, "selector": c.selector,
                         "created_at": _iso(c.created_at), "superseded_at": _iso(c.superseded_at),
                         "zoom_count": c.zoom_count, "regions": c.regions} for c in rnd.choices],
            "refinements": [{"id": r.id, "choice_id": r.choice_id, "image": image(r.result_image_hash),
                             "params": dict(r.params), "seconds": r.seconds, "next_round_id": r.next_round_id,
                             "created_at": _iso(r.created_at)} for r in refinements],
        })
    record = {"session": {"id": row.id, "created_at": _iso(row.created_at)}, "rounds": rounds,
              "images": "images/<image id>.png (sha256 of the PNG)"}
    return record, list(images)


def write_session_zip(record: dict[str, Any], image_ids: list[str], images: ImageStore,
                      out: str | os.PathLike[str]) -> Path:
    """Write the zip (session.json + images/) to `out` atomically; InputError when an image file is missing."""
    out = Path(out)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("session.json", json.dumps(record, indent=1, allow_nan=False) + "\n")
            for image_id in image_ids:  # PNGs are compressed already
                try:
                    archive.writestr(f"images/{image_id}.png", images.get_bytes(image_id))
                except NotFound:
                    raise InputError(f"image {image_id} of this session is missing from the image store") from None
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out
