"""Contact sheets of a recorded round, for a download: the web asks the loop, the loop draws with restoration."""
from __future__ import annotations

import tempfile
from pathlib import Path

from feedback.loop.service import FeedbackService, _to_tensor
from restoration.sheet import candidate_label, round_sheet, save_png_atomically


def contact_sheet(service: FeedbackService, round_id: str, refined_id: str | None) -> Path:
    """A PNG contact sheet of the round (input, start, every candidate with strength and seed, the refined image,
    and one region of each at 1:1 or 2x nearest) in a temporary folder; its path."""
    view = service.get_round(round_id)
    load = lambda image_id: _to_tensor(service.images.get_array(image_id))  # noqa: E731
    cands = [(candidate_label(f"#{c.position + 1}", c.strength, c.seed), load(c.image_id))
             for c in view.candidates if not c.is_restored]
    start_label = "restored" if view.round_index == 0 else f"start of round {view.round_index}"
    sheet = round_sheet(load(view.input_image_id), load(view.start_image_id), cands,
                        load(refined_id) if refined_id else None, start_label)
    path = Path(tempfile.gettempdir()) / "ttpo-lab-sheets" / f"round-{round_id}.png"
    save_png_atomically(sheet, path)
    return path
