"""The history page's chart: exchanges per month by outcome, drawn on the server as SVG.

No script: the page stays usable without JavaScript, and the same numbers follow the chart as
a table (the chart's text alternative)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from access_history.person import MonthCount, month_starts

# outcome codes grouped into what a person asks: given, given by law over my no, not given,
# the provider reported it, the hub delivered it, something does not match (message IDs of the
# portal's catalogs)
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("permitted", "提供された", "#2b6cb0"),
    ("overridden", "拒否に関わらず法律により提供", "#b7791f"),
    ("refused", "提供されなかった", "#718096"),
    ("reported", "提供機関の報告", "#2f855a"),
    ("delivered", "ハブが届けた", "#2c7a7b"),
    ("anomaly", "不一致", "#c53030"),
)
_GROUP_OF = {
    "PERMITTED_BY_CONSENT": "permitted", "PERMITTED_BY_LAW": "permitted",
    "LAW_OVERRIDES_CONSENT": "overridden",
    "DENIED_BY_PERSON": "refused", "CONSENT_NOT_GIVEN": "refused", "NO_WHITELIST_ENTRY": "refused",
    "NO_ENCRYPTION_KEY": "refused",
    "DISCLOSED": "reported",
    "DELIVERED": "delivered", "REJECTED_BY_RECEIVER": "delivered", "NOT_DELIVERED": "refused",
}
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 240, 40, 30, 10


def group_of(outcome: str) -> str:
    return _GROUP_OF.get(outcome, "anomaly")


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    color: str
    group: str
    count: int


@dataclass(frozen=True)
class Month:
    label: str  # YYYY-MM
    x: float  # the label's centre
    counts: dict[str, int]
    total: int
    bars: list[Bar]


@dataclass(frozen=True)
class Chart:
    months: list[Month]
    peak: int
    ticks: list[tuple[float, int]]  # (y, value) of the axis labels
    groups: tuple[tuple[str, str, str], ...] = GROUPS
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    base: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return self.peak == 0


def build(counts: list[MonthCount], now: datetime) -> Chart:
    """Lay out stacked bars, one per month of the last twelve, from the per-month counts."""
    labels = [m.strftime("%Y-%m") for m in month_starts(now)]
    per_month: dict[str, dict[str, int]] = {label: {g: 0 for g, _, _ in GROUPS} for label in labels}
    for c in counts:
        if c.month in per_month:
            per_month[c.month][group_of(c.outcome)] += c.count
    peak = max((sum(v.values()) for v in per_month.values()), default=0)
    scale_top = max(peak, 1)
    plot = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / len(labels)
    months = []
    for i, label in enumerate(labels):
        x, y, bars = LEFT + i * slot + slot * 0.15, float(HEIGHT - BOTTOM), []
        for group, _, color in GROUPS:
            count = per_month[label][group]
            if count:
                h = plot * count / scale_top
                y -= h
                bars.append(Bar(round(x, 1), round(y, 1), round(h, 1), color, group, count))
        months.append(Month(label, round(LEFT + i * slot + slot / 2, 1), per_month[label],
                            sum(per_month[label].values()), bars))
    ticks = [(round(HEIGHT - BOTTOM - plot * v / scale_top, 1), v) for v in sorted({0, scale_top // 2, scale_top})]
    return Chart(months, peak, ticks)


BAR_WIDTH = round((WIDTH - LEFT) / 12 * 0.7, 1)
