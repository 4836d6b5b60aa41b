"""Guide studies: people choose among a stimulus's TTPO candidates, and another study's 'ttpo-human:' condition
refines with their choice.

A guide study (`kind: guide`, one condition 'ttpo-human:<backbone>[;prior=<name>]', K = candidates_per_round in
3..6) shows, for each stimulus, the backbone's restoration and K-1 diffusion candidates (seeds and strengths
recorded) as a gallery; the participant picks the best and may mark the worst. A compare study whose conditions
include 'ttpo-human:<backbone>' names it in `guide_study`; `load_guide` checks that the guide can stand for it
(a guide study, active, the same images, degradations, seed and size, so its candidates are the ones this study
makes) and counts its votes per stimulus.

Votes counted (`count_guide_votes`): the answered main items (first showings; repeats and attention checks left
out) of the guide's participants who passed every attention check they answered; withdrawn participants have
no rows left. The choice from the counts (`guide_choice`), ties explicit:
  - preferred: every candidate picked best the most times (several when tied);
  - all candidates tied for most picks (or no votes): no preference, preferred = rejected = [] (refinement then
    keeps to the restoration, as 'ttpo-auto' does on a selector tie);
  - rejected: among the candidates not preferred, those marked worst the most times when any of them was marked
    worst, else those picked best the fewest times (several when tied). A candidate is never both.
The votes are read when the study is prepared; the stimulus facts record the counts used.

Nothing here imports torch: `feedback.studies.prepare` computes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from feedback.record.errors import InputError
from feedback.record.models import Participant, Study
from feedback.studies.study import StudyDefinition, study_from_dict


@dataclass(frozen=True)
class GuideChoice:
    """One stimulus's guide votes: how many, picks per candidate label, and the choice they make."""

    votes: int
    best: dict[str, int]
    worst: dict[str, int]
    preferred: tuple[str, ...]
    rejected: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"votes": self.votes, "best": self.best, "worst": self.worst, "preferred": list(self.preferred),
                "rejected": list(self.rejected)}


@dataclass(frozen=True)
class Guide:
    """A guide study as a compare study uses it: its id, its stimuli (outputs = candidate label -> image id,
    `guide` = how the candidates were made) and the choice of its people per stimulus."""

    study_id: str
    definition: StudyDefinition
    stimuli: list[dict[str, Any]]
    choices: list[GuideChoice]


def guide_choice(labels: Sequence[str], best: Mapping[str, int],
                 worst: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """(preferred, rejected) candidate labels from best-pick and worst-mark counts (module docstring: ties)."""
    top = max((best.get(label, 0) for label in labels), default=0)
    preferred = [label for label in labels if best.get(label, 0) == top]
    if top == 0 or len(preferred) == len(labels):
        return [], []
    others = [label for label in labels if label not in preferred]
    if any(worst.get(label, 0) for label in others):
        most = max(worst.get(label, 0) for label in others)
        return preferred, [label for label in others if worst.get(label, 0) == most]
    fewest = min(best.get(label, 0) for label in others)
    return preferred, [label for label in others if best.get(label, 0) == fewest]


def count_guide_votes(s: Session, study_id: str, n_stimuli: int) -> list[tuple[int, Counter[str], Counter[str]]]:
    """(votes, best picks, worst marks) per stimulus of a guide study (counted as the module docstring says)."""
    counts: list[tuple[int, Counter[str], Counter[str]]] = [(0, Counter(), Counter()) for _ in range(n_stimuli)]
    for participant in s.scalars(select(Participant).where(Participant.study_id == study_id)):
        items = participant.items
        if any(i.is_attention_check and i.answer is not None and i.answer != i.expected for i in items):
            continue
        for item in items:
            if item.answer is None or item.is_attention_check or item.is_repeat or item.gallery is None:
                continue
            n, best, worst = counts[item.stimulus]
            best[item.gallery[int(item.answer) - 1]["condition"]] += 1
            if item.worst is not None:
                worst[item.gallery[int(item.worst) - 1]["condition"]] += 1
            counts[item.stimulus] = (n + 1, best, worst)
    return counts


def load_guide(s: Session, study: StudyDefinition, inputs: Sequence[str]) -> Guide:
    """The guide study `study.guide_study` with its votes; InputError saying what does not fit: no such study,
    not a guide study, not active, other images / degradations / seed / size, or stimuli with fewer than
    `study.min_guide_votes` votes (listed)."""
    gid = study.guide_study
    row = s.get(Study, gid) if isinstance(gid, str) else None
    if row is None:
        raise InputError(f"guide_study {str(gid)[:40]!r}: no study with this id; create and run a guide study "
                         "(kind: guide) first")
    guide = study_from_dict(row.definition)
    if guide.kind != "guide":
        raise InputError(f"guide_study {gid}: study {row.name!r} is a {guide.kind} study, not a guide study "
                         "(kind: guide)")
    if row.status == "preparing":
        raise InputError(f"guide_study {gid} is still being prepared ({row.progress_done} of {row.progress_total} "
                         "stimuli); collect its votes once it is active")
    if row.status != "active":
        raise InputError(f"guide_study {gid} is {row.status}{': ' + row.error if row.error else ''}; "
                         "only an active guide study can guide")
    differences = [what for what, ours, theirs in [
        ("images", list(inputs), list(row.inputs or [])), ("degradations", study.degradations, guide.degradations),
        ("seed", study.seed, guide.seed), ("size", study.size, guide.size)] if ours != theirs]
    if differences:
        raise InputError(f"guide_study {gid} has other {', '.join(differences)} than this study; a guide's "
                         "candidates stand for this study's only with the same images, degradations, seed and size")
    labels = list(guide.plan_conditions)
    choices = []
    lacking = []
    for j, (n, best, worst) in enumerate(count_guide_votes(s, gid, len(guide.stimuli))):
        preferred, rejected = guide_choice(labels, best, worst)
        choices.append(GuideChoice(n, {k: best[k] for k in labels if best[k]},
                                   {k: worst[k] for k in labels if worst[k]}, tuple(preferred), tuple(rejected)))
        if n < study.min_guide_votes:
            i, spec = guide.stimuli[j]
            lacking.append(f"stimulus {j} (image {i}{', ' + spec if spec else ''}): {n}")
    if lacking:
        raise InputError(f"guide_study {gid} lacks votes: {study.min_guide_votes} per stimulus needed "
                         f"(min_guide_votes), counted {'; '.join(lacking)} (attention-check failures and "
                         "repeats not counted)")
    return Guide(gid, guide, list(row.stimuli), choices)
