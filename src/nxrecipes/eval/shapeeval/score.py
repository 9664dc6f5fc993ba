"""ShapeEval scores: prompts (GenEval-style), edits and captions, from what ``detect`` finds.

- ``spec_satisfied(detections, spec)``: the GenEval rule. ``counting``: exactly ``count`` objects
  match each query; other categories: at least ``count``; ``position``: besides, some object matching
  ``objects[0]`` stands ``relation`` some other object matching ``objects[1]`` (``relation_holds``).
  This is ``scenes.satisfies`` applied to detections instead of the scene's truth.
- ``partial_credit``: the fraction of a spec's requirements met (each object query, plus the
  relation of a position prompt); 1.0 exactly when the spec is satisfied.
- ``evaluate(images, specs)``: a ``ShapeEvalReport`` with per-category accuracy and the overall
  accuracy as GenEval reports it, the mean of the category accuracies.
- ``edit_score(source, edited, edit)`` and ``caption_score(caption, image)``: see their docstrings.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from nxrecipes.data.shapeworld.captions import parse_caption, parse_prompt
from nxrecipes.data.shapeworld.edits import region_holds
from nxrecipes.data.shapeworld.spec import CATEGORIES, DIRECTIONS, Detection, EditSpec, ObjectQuery, Spec
from nxrecipes.data.shapeworld.world import RELATION_MARGIN, Scene, relation_holds
from nxrecipes.eval.shapeeval.detect import detect

__all__ = [
    "CaptionResult",
    "EditResult",
    "SampleResult",
    "ShapeEvalReport",
    "caption_score",
    "edit_score",
    "evaluate",
    "partial_credit",
    "requirements_met",
    "spec_satisfied",
]

NEAR = 0.08  # an object this close (normalised) to the edit target's place is "at its place"
KEEP = 0.06  # an untouched object may shift this much between source and edited image
MOVE_MARGIN = RELATION_MARGIN  # a move must carry the target at least this far along its direction


# ------------------------------------------------------------------------------------------------
# prompts


def _detections(detections: object, name: str = "detections") -> list[Detection]:
    """A list of detections; a ``Scene`` gives the detections a perfect detector would report."""
    if isinstance(detections, Scene):
        return [Detection.of(o) for o in detections.objects]
    if isinstance(detections, Detection) or not isinstance(detections, Iterable):
        raise TypeError(
            f"{name} must be a sequence of Detection (from detect(image)) or a Scene, "
            f"got {type(detections).__name__}"
        )
    out = list(detections)
    for i, d in enumerate(out):
        if not isinstance(d, Detection):
            raise TypeError(f"{name}[{i}] must be a Detection, got {type(d).__name__}")
    return out


def _check_spec(spec: object, name: str = "spec") -> Spec:
    if not isinstance(spec, Spec):
        raise TypeError(
            f"{name} must be a Spec (parse a prompt with parse_prompt), got {type(spec).__name__}"
        )
    return spec


def _matching(detections: list[Detection], query: ObjectQuery) -> list[Detection]:
    return [d for d in detections if query.matches(d.shape, d.colour)]


def requirements_met(detections: object, spec: Spec) -> tuple[int, int]:
    """(requirements met, requirements) of ``spec`` in ``detections``: one per object query, plus
    the relation of a position prompt."""
    found = _detections(detections)
    _check_spec(spec)
    met = 0
    for query in spec.objects:
        n = len(_matching(found, query))
        met += n == query.count if spec.category == "counting" else n >= query.count
    total = len(spec.objects)
    if spec.relation is not None:
        total += 1
        first, second = (_matching(found, q) for q in spec.objects)
        met += any(
            a is not b and relation_holds((a.x, a.y), (b.x, b.y), spec.relation)
            for a in first
            for b in second
        )
    return met, total


def spec_satisfied(detections: object, spec: Spec) -> bool:
    """Whether ``detections`` (a list of ``Detection``, or a ``Scene`` for its truth) meet ``spec``."""
    met, total = requirements_met(detections, spec)
    return met == total


def partial_credit(detections: object, spec: Spec) -> float:
    """1.0 when ``spec`` is satisfied, else the fraction of its requirements met (each object query,
    plus the relation of a position prompt), which is then below 1."""
    met, total = requirements_met(detections, spec)
    return met / total


# ------------------------------------------------------------------------------------------------
# reports


def _detection_dict(d: Detection) -> dict[str, Any]:
    return {"shape": d.shape, "colour": d.colour, "x": round(float(d.x), 4), "y": round(float(d.y), 4),
            "area": round(float(d.area), 5)}


@attrs.frozen(kw_only=True)
class SampleResult:
    index: int
    spec: Spec
    satisfied: bool
    score: float  # partial credit (1.0 when satisfied)
    detections: tuple[Detection, ...]
    prompt: str | None = None

    @property
    def category(self) -> str:
        return self.spec.category

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "prompt": self.prompt,
            "category": self.category,
            "spec": attrs.asdict(self.spec),
            "satisfied": self.satisfied,
            "score": self.score,
            "detections": [_detection_dict(d) for d in self.detections],
        }


@attrs.frozen
class ShapeEvalReport:
    """Per-sample results; per-category accuracy (categories present, in ``CATEGORIES`` order) and
    ``overall``, the mean of the category accuracies (GenEval's overall score)."""

    samples: tuple[SampleResult, ...] = attrs.field(converter=tuple)

    @property
    def categories(self) -> dict[str, tuple[int, int]]:
        """category -> (satisfied, samples)."""
        out: dict[str, tuple[int, int]] = {}
        for category in CATEGORIES:
            hits = [s.satisfied for s in self.samples if s.category == category]
            if hits:
                out[category] = (sum(hits), len(hits))
        return out

    @property
    def accuracy(self) -> dict[str, float]:
        return {c: k / n for c, (k, n) in self.categories.items()}

    @property
    def overall(self) -> float:
        values = list(self.accuracy.values())
        return sum(values) / len(values) if values else math.nan

    @property
    def partial(self) -> float:
        """The mean partial credit over samples (finer-grained than ``overall`` while few pass)."""
        return sum(s.score for s in self.samples) / len(self.samples) if self.samples else math.nan

    @property
    def drawn(self) -> dict[str, dict[str, float]]:
        """category -> ``asked`` (mean objects its prompts name), ``drawn`` (mean objects detected) and
        ``empty`` (the fraction of images where nothing is detected): whether a model or sampler draws
        too few objects or too many, which accuracy alone does not say."""
        out: dict[str, dict[str, float]] = {}
        for category in CATEGORIES:
            group = [s for s in self.samples if s.category == category]
            if group:
                out[category] = {
                    "asked": sum(q.count for s in group for q in s.spec.objects) / len(group),
                    "drawn": sum(len(s.detections) for s in group) / len(group),
                    "empty": sum(not s.detections for s in group) / len(group),
                }
        return out

    def summary(self) -> dict[str, Any]:
        """``overall``, ``partial``, per-category ``categories`` accuracy and ``drawn`` counts."""
        return {"overall": self.overall, "partial": self.partial, "categories": self.accuracy,
                "drawn": self.drawn}

    def format_table(self) -> str:
        rows = [(c, str(n), f"{k / n:.3f}") for c, (k, n) in self.categories.items()]
        rows.append(("overall", str(len(self.samples)), f"{self.overall:.3f}"))
        widths = [max(len(r[i]) for r in [("category", "n", "accuracy"), *rows]) for i in range(3)]
        lines = [f"{'category':<{widths[0]}}  {'n':>{widths[1]}}  {'accuracy':>{widths[2]}}"]
        lines.append("-" * len(lines[0]))
        for i, (c, n, a) in enumerate(rows):
            if i == len(rows) - 1:
                lines.append("-" * len(lines[0]))
            lines.append(f"{c:<{widths[0]}}  {n:>{widths[1]}}  {a:>{widths[2]}}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        overall, partial = self.overall, self.partial
        return {
            "overall": None if math.isnan(overall) else overall,
            "partial": None if math.isnan(partial) else partial,
            "drawn": self.drawn,
            "categories": {
                c: {"accuracy": k / n, "satisfied": k, "samples": n} for c, (k, n) in self.categories.items()
            },
            "samples": [s.to_dict() for s in self.samples],
        }


def _as_spec(item: object, index: int) -> tuple[Spec, str | None]:
    if isinstance(item, Spec):
        return item, None
    if isinstance(item, str):
        try:
            return parse_prompt(item), item
        except ValueError as e:
            raise ValueError(f"specs[{index}] = {item!r} is not a ShapeWorld prompt: {e}") from e
    spec = getattr(item, "spec", None)  # e.g. a dataset.PromptSpec
    if isinstance(spec, Spec):
        prompt = getattr(item, "prompt", None)
        return spec, prompt if isinstance(prompt, str) else None
    raise TypeError(
        f"specs[{index}] must be a Spec, a prompt string or a PromptSpec, got {type(item).__name__}"
    )


def evaluate(images: Sequence[Any] | torch.Tensor, specs: Sequence[Spec | str], *,
             progress: bool = False) -> ShapeEvalReport:
    """Score each image against its spec (a ``Spec``, a prompt, or a ``PromptSpec``).

    ``images``: a sequence of images in any form ``detect`` takes, or a float tensor [batch, 3, H, W].
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"images as a tensor must be [batch, 3, H, W], got shape {tuple(images.shape)}; "
                "pass a list for single images"
            )
    elif isinstance(images, str | bytes) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a sequence of images or a [batch, 3, H, W] tensor, got "
                        f"{type(images).__name__}")
    if isinstance(specs, str) or not isinstance(specs, Sequence):
        raise TypeError(
            f"specs must be a sequence (one Spec or prompt per image), got {type(specs).__name__}"
        )
    if len(images) != len(specs):
        raise ValueError(f"got {len(images)} images and {len(specs)} specs; pass one spec per image")
    parsed = [_as_spec(s, i) for i, s in enumerate(specs)]  # all prompts checked before any work
    samples = []
    for i, (spec, prompt) in enumerate(tqdm(parsed, desc="ShapeEval", disable=not progress)):
        found = detect(images[i])
        met, total = requirements_met(found, spec)
        samples.append(SampleResult(index=i, spec=spec, satisfied=met == total, score=met / total,
                                    detections=tuple(found), prompt=prompt))
    return ShapeEvalReport(samples)


# ------------------------------------------------------------------------------------------------
# edits


@attrs.frozen(kw_only=True)
class EditResult:
    target_ok: bool  # the instruction's target state holds
    preserved_ok: bool  # every other object is still there (same shape and colour, ~same place), nothing new
    reason: str  # what failed, or "ok"
    ok: bool = attrs.field(init=False)  # both

    @ok.default
    def _both(self) -> bool:
        return self.target_ok and self.preserved_ok


def _distance(a: Detection, b: Detection) -> float:
    return math.hypot(a.x - b.x, a.y - b.y)


def _pair_up(before: list[Detection], after: list[Detection]) -> tuple[list[Detection], list[Detection]]:
    """Match each of ``before`` to one of ``after`` of the same shape and colour within ``KEEP``,
    closest pairs first: (unmatched before, unmatched after)."""
    pairs = sorted(
        (_distance(a, b), i, j)
        for i, a in enumerate(before)
        for j, b in enumerate(after)
        if (a.shape, a.colour) == (b.shape, b.colour) and _distance(a, b) <= KEEP
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    for _, i, j in pairs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
    return ([a for i, a in enumerate(before) if i not in used_a],
            [b for j, b in enumerate(after) if j not in used_b])


_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def _target_state(edit: EditSpec, old: Detection | None, new: list[Detection]
                  ) -> tuple[Detection | None, str]:
    """The edited image's detection that shows the edit done, among ``new`` (those not matched to
    an untouched object), or None and why not."""
    t = edit.target
    if edit.op == "remove":
        left = [d for d in new if (d.shape, d.colour) == (old.shape, old.colour)]
        return (None, "ok") if not left else (left[0], f"the {old.colour} {old.shape} is still there")
    if edit.op == "add":
        fits = [d for d in new if t.matches(d.shape, d.colour)]
        if edit.direction is not None:
            fits = [d for d in fits if region_holds(d.x, d.y, edit.direction)]
        where = f" on the {edit.direction} side" if edit.direction else ""
        name = f"{t.colour} {t.shape}" if t.colour else t.shape
        return (fits[0], "ok") if fits else (None, f"no new {name}{where}")
    if edit.op == "move":
        ux, uy = _STEP[edit.direction]
        for d in sorted(new, key=lambda d: _distance(d, old)):
            along = (d.x - old.x) * ux + (d.y - old.y) * uy
            across = abs((d.x - old.x) * uy - (d.y - old.y) * ux)
            if (d.shape, d.colour) == (old.shape, old.colour) and along >= MOVE_MARGIN and along > across:
                return d, "ok"
        return None, f"the {old.colour} {old.shape} did not move {edit.direction} by {MOVE_MARGIN}"
    shape = edit.shape if edit.op == "replace" else old.shape
    colour = edit.colour if edit.op == "recolour" else edit.colour or old.colour
    stale = [d for d in new if (d.shape, d.colour) == (old.shape, old.colour) and _distance(d, old) <= NEAR]
    if stale:
        return None, f"the {old.colour} {old.shape} is still at its place"
    fresh = [d for d in new if (d.shape, d.colour) == (shape, colour) and _distance(d, old) <= NEAR]
    return (fresh[0], "ok") if fresh else (None, f"no {colour} {shape} at the target's place")


def edit_score(source_image: object, edited_image: object, edit: EditSpec) -> EditResult:
    """Whether ``edited_image`` is ``source_image`` with ``edit`` done.

    ``target_ok``: recolour — an object of the new colour and the target's shape sits at the target's
    place (within ``NEAR``) and the old one does not; add — a new object matching the target (in the
    named part of the image, when a direction is given); remove — no object like the target is left;
    move — the target's centre moved at least ``MOVE_MARGIN`` along the direction (more along it than
    across); replace — the new shape (and colour) at the target's place, the old one gone.
    ``preserved_ok``: every other source object has a match of the same shape and colour within
    ``KEEP``, and no other object appeared (when the target state fails, the changed object nearest
    the target's place is taken for the botched target, not counted as appeared). When several
    source objects match the target, the edit counts as done if it is done on any of them; the
    ``reason`` says what failed. Images: any form ``detect`` takes, or a ``Scene`` for its truth.
    """
    if not isinstance(edit, EditSpec):
        raise TypeError(f"edit must be an EditSpec, got {type(edit).__name__}")
    if edit.op == "move" and edit.direction not in DIRECTIONS:
        raise ValueError(f"a move edit needs a direction, one of {list(DIRECTIONS)}; got {edit.direction!r}")
    if edit.op == "recolour" and edit.colour is None:
        raise ValueError("a recolour edit needs colour (the new colour); got None")
    if edit.op == "replace" and edit.shape is None:
        raise ValueError("a replace edit needs shape (the new shape); got None")
    before = _scene_or_detect(source_image, "source_image")
    after = _scene_or_detect(edited_image, "edited_image")
    if edit.op == "add":
        candidates: list[Detection | None] = [None]
    else:
        candidates = [d for d in before if edit.target.matches(d.shape, d.colour)]
        if not candidates:
            name = f"{edit.target.colour or ''} {edit.target.shape}".strip()
            return EditResult(target_ok=False, preserved_ok=False, reason=f"no {name} in the source image")
    results = []
    for old in candidates:
        others = [d for d in before if d is not old]
        missing, new = _pair_up(others, after)
        shown, reason = _target_state(edit, old, new)
        target_ok = reason == "ok"
        if shown is None and new and not (target_ok and edit.op == "remove"):
            # a failed edit of the target still accounts for one changed object: the one nearest
            # the target's place (any one for a failed add)
            shown = min(new, key=lambda d: _distance(d, old)) if old is not None else new[0]
        extra = [d for d in new if d is not shown]
        preserved_ok = not missing and not extra
        if target_ok and not preserved_ok:
            what = [f"{d.colour} {d.shape} missing" for d in missing] + [f"{d.colour} {d.shape} appeared"
                                                                         for d in extra]
            reason = "; ".join(what)
        results.append(EditResult(target_ok=target_ok, preserved_ok=preserved_ok, reason=reason))
    return max(results, key=lambda r: (r.ok, r.target_ok, r.preserved_ok))


def _scene_or_detect(image: object, name: str) -> list[Detection]:
    if isinstance(image, Scene):
        return _detections(image)
    try:
        return detect(image)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from e


# ------------------------------------------------------------------------------------------------
# captions


@attrs.frozen(kw_only=True)
class CaptionResult:
    exact: bool  # the caption lists exactly the image's objects
    f1: float
    precision: float  # of the caption's objects, the fraction the image holds
    recall: float  # of the image's objects, the fraction the caption lists
    caption: dict[tuple[str, str], int]  # (colour, shape) -> count the caption states
    image: dict[tuple[str, str], int]  # (colour, shape) -> count found in the image


def caption_score(caption: str, image: object) -> CaptionResult:
    """Compare what ``caption`` states (``captions.parse_caption``) with the (colour, shape) counts
    found in ``image`` (any form ``detect`` takes, or a ``Scene`` for its truth). F1 over the
    multisets of objects; two empty multisets score 1."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    stated = parse_caption(caption)
    found = Counter((d.colour, d.shape) for d in _scene_or_detect(image, "image"))
    hits = sum((stated & found).values())
    n_stated, n_found = sum(stated.values()), sum(found.values())
    precision = hits / n_stated if n_stated else float(n_found == 0)
    recall = hits / n_found if n_found else float(n_stated == 0)
    f1 = 2 * hits / (n_stated + n_found) if n_stated + n_found else 1.0
    return CaptionResult(exact=stated == found, f1=f1, precision=precision, recall=recall,
                         caption=dict(stated), image=dict(found))
