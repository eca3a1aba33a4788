"""The console's pictures laid out as numbers: a reservation's timeline (statuses as lanes, each
step a point) and the outcomes over time (stacked bars). Pure; the templates draw them as SVG on
the server, so a page needs no script to show them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from workers.audit.timeline import Step
from workers.core.vocabulary import OUTCOMES
from workers.ledger.models import OutcomeCount

# Lanes top to bottom: the way forward first, then the ends TaskRouter or an agent choose.
STATUS_ORDER = (
    "pending",
    "accepted",
    "wrapping",
    "completed",
    "rejected",
    "timeout",
    "canceled",
    "rescinded",
)
LANE_HEIGHT = 36
STEP_WIDTH = 150
LEFT = 110
TOP = 24


@dataclass(frozen=True, slots=True)
class Lane:
    status: str
    y: int


@dataclass(frozen=True, slots=True)
class Point:
    """One step drawn: where, the step, and its short label (source and action)."""

    x: int
    y: int
    step: Step
    number: int
    label: str


@dataclass(frozen=True, slots=True)
class Segment:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class TimelinePicture:
    width: int
    height: int
    lanes: list[Lane]
    points: list[Point]
    segments: list[Segment]


def timeline_picture(steps: list[Step]) -> TimelinePicture:
    """Statuses as lanes (only those the reservation went through), steps left to right in
    ledger order, each joined to the one before."""
    seen = {s.to_status for s in steps} | {s.from_status for s in steps if s.from_status}
    statuses = [s for s in STATUS_ORDER if s in seen] + sorted(seen - set(STATUS_ORDER))
    lanes = [Lane(status, TOP + index * LANE_HEIGHT) for index, status in enumerate(statuses)]
    lane_y = {lane.status: lane.y for lane in lanes}
    points: list[Point] = []
    segments: list[Segment] = []
    x = LEFT + STEP_WIDTH // 3
    if steps and steps[0].from_status:
        # Where the reservation stood before the first step the ledger recorded.
        previous: tuple[int, int] | None = (LEFT, lane_y[steps[0].from_status])
    else:
        previous = None
    for number, step in enumerate(steps, 1):
        y = lane_y[step.to_status]
        if previous is not None:
            segments.append(Segment(previous[0], previous[1], x, y))
        short = f" {str(step.action_id)[:8]}" if step.action_id is not None else ""
        points.append(Point(x, y, step, number, f"{step.source}{short}"))
        previous = (x, y)
        x += STEP_WIDTH
    width = max(x, LEFT + STEP_WIDTH)
    return TimelinePicture(width, TOP + max(len(lanes), 1) * LANE_HEIGHT + 28, lanes, points, segments)


@dataclass(frozen=True, slots=True)
class BarPart:
    outcome: str
    count: int
    y: int
    height: int


@dataclass(frozen=True, slots=True)
class Bar:
    x: int
    label: str
    total: int
    parts: list[BarPart]


@dataclass(frozen=True, slots=True)
class OutcomeChart:
    """Bars oldest to newest; ``totals`` per outcome over the whole span."""

    title: str
    width: int
    height: int
    bar_width: int
    top: int
    bottom: int
    bars: list[Bar]
    totals: dict[str, int]
    peak: int


def coarser(counts: Iterable[OutcomeCount], factor: int) -> list[OutcomeCount]:
    """The same counts in buckets ``factor`` times as long (outcome_chart adds up duplicates)."""
    return [OutcomeCount(c.outcome, c.bucket // factor, c.n) for c in counts]


def outcome_chart(
    title: str, counts: Iterable[OutcomeCount], buckets: int, bucket_seconds: int, bar_width: int = 22
) -> OutcomeChart:
    """Stacked bars of ``buckets`` buckets of ``bucket_seconds`` each, the latest on the right."""
    per_bucket: list[dict[str, int]] = [{} for _ in range(buckets)]
    totals = dict.fromkeys(OUTCOMES, 0)
    for count in counts:
        if 0 <= count.bucket < buckets:
            per_bucket[count.bucket][count.outcome] = per_bucket[count.bucket].get(count.outcome, 0) + count.n
            totals[count.outcome] = totals.get(count.outcome, 0) + count.n
    peak = max((sum(b.values()) for b in per_bucket), default=0)
    top, bottom, plot = 16, 136, 120
    bars = []
    for index in range(buckets):
        ago = buckets - 1 - index  # bucket 0 is the latest: drawn rightmost
        y = bottom
        parts = []
        for outcome in OUTCOMES:
            n = per_bucket[ago].get(outcome, 0)
            if n and peak:
                height = max(1, round(n * plot / peak))
                y -= height
                parts.append(BarPart(outcome, n, y, height))
        minutes = ago * bucket_seconds // 60
        label = "now" if ago == 0 else (f"-{minutes // 60}h" if minutes >= 60 else f"-{minutes}m")
        bars.append(Bar(40 + index * (bar_width + 4), label, sum(per_bucket[ago].values()), parts))
    width = 40 + buckets * (bar_width + 4) + 10
    return OutcomeChart(title, width, bottom + 24, bar_width, top, bottom, bars, totals, peak)
