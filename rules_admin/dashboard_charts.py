"""The dashboard's charts as geometry for inline SVG, computed on the server: the page needs no JavaScript and no
chart library (nothing to vendor, nothing from a CDN). The templates draw what these dataclasses describe."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

# Colour-blind-safe (Okabe-Ito), one per series, cycling.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")

Format = Callable[[float], str]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at least `value` (an axis' top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10 * power


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class DayTick:
    day: str  # ISO date
    x: float
    label: str  # empty when the axis is too crowded to label every day


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    day: str
    label: str


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    path: str  # SVG path data; a day without a value breaks the line
    points: list[Point]


@dataclass(frozen=True)
class LineChart:
    key: str
    title: str
    width: int
    height: int
    left: int
    top: int
    plot_width: float
    plot_height: float
    y_ticks: list[Tick]
    days: list[DayTick]
    series: list[Series]

    @property
    def bottom(self) -> float:
        return self.top + self.plot_height

    @property
    def right(self) -> float:
        return self.left + self.plot_width

    @property
    def value_label_x(self) -> float:
        return self.left - 6

    @property
    def day_tick_end(self) -> float:
        return self.bottom + 4

    @property
    def day_label_y(self) -> float:
        return self.height - 4


def line_chart(
    *,
    key: str,
    title: str,
    days: Sequence[date],
    series: dict[str, list[float | None]],
    fmt: Format,
    width: int = 440,
    height: int = 180,
) -> LineChart:
    """One line per series over the days (a value per day, None where undefined), on a linear axis from 0."""
    left, right, top, bottom = 64, 12, 10, 26
    plot_width, plot_height = width - left - right, height - top - bottom
    top_value = nice_ceiling(max((v for values in series.values() for v in values if v is not None), default=0.0))
    band = plot_width / max(len(days), 1)
    every = max(1, math.ceil(len(days) / 8))  # at most about eight day labels

    def x_of(index: int) -> float:
        return round(left + band * (index + 0.5), 2)

    def y_of(value: float) -> float:
        return round(top + plot_height * (1 - value / top_value), 2)

    drawn = []
    for number, (name, values) in enumerate(series.items()):
        points, commands, pen_down = [], [], False
        for index, (day, value) in enumerate(zip(days, values, strict=True)):
            if value is None:
                pen_down = False
                continue
            x, y = x_of(index), y_of(value)
            commands.append(f"{'L' if pen_down else 'M'}{x},{y}")
            pen_down = True
            points.append(Point(x, y, day.isoformat(), f"{name}, {day.isoformat()}: {fmt(value)}"))
        drawn.append(Series(name, PALETTE[number % len(PALETTE)], " ".join(commands), points))
    return LineChart(
        key=key,
        title=title,
        width=width,
        height=height,
        left=left,
        top=top,
        plot_width=plot_width,
        plot_height=plot_height,
        y_ticks=[Tick(y_of(top_value * share), fmt(top_value * share)) for share in (0, 0.5, 1)],
        days=[
            DayTick(day.isoformat(), x_of(index), day.strftime("%d %b") if index % every == 0 else "")
            for index, day in enumerate(days)
        ],
        series=drawn,
    )


@dataclass(frozen=True)
class Bar:
    y: float
    width: float
    colour: str
    label: str  # the value, written after the bar
    measure: str  # which measure of the row (e.g. p50)


@dataclass(frozen=True)
class BarRow:
    key: str
    label: str
    y: float  # the row's middle
    bars: list[Bar]


@dataclass(frozen=True)
class BarChart:
    key: str
    title: str
    width: int
    height: int
    left: int
    plot_width: float
    bar_height: float
    rows: list[BarRow]
    legend: list[tuple[str, str]]  # (measure, colour)

    @property
    def row_label_x(self) -> float:
        return self.left - 8


def bar_chart(
    *,
    key: str,
    title: str,
    rows: Sequence[tuple[str, str, Sequence[float | None]]],
    measures: Sequence[str],
    fmt: Format,
    width: int = 640,
) -> BarChart:
    """Horizontal bars: per row (key, label, one value per measure), one bar per measure with a value, on a
    linear axis from 0 to the largest value."""
    left, right, row_height, gap = 200, 90, 10 + 12 * len(measures), 8
    plot_width = width - left - right
    top_value = max((v for _, _, values in rows for v in values if v is not None), default=0.0) or 1.0
    bar_height = (row_height - 4) / len(measures)
    drawn = []
    for index, (row_key, label, values) in enumerate(rows):
        row_top = index * (row_height + gap)
        bars = [
            Bar(
                y=round(row_top + 2 + number * bar_height, 2),
                width=round(max(plot_width * value / top_value, 1.0), 2),
                colour=PALETTE[number % len(PALETTE)],
                label=fmt(value),
                measure=measure,
            )
            for number, (measure, value) in enumerate(zip(measures, values, strict=True))
            if value is not None
        ]
        drawn.append(BarRow(row_key, label, round(row_top + row_height / 2, 2), bars))
    return BarChart(
        key=key,
        title=title,
        width=width,
        height=max(len(rows) * (row_height + gap), 1),
        left=left,
        plot_width=plot_width,
        bar_height=round(bar_height - 1, 2),
        rows=drawn,
        legend=[(measure, PALETTE[number % len(PALETTE)]) for number, measure in enumerate(measures)],
    )


def format_count(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def format_percent(value: float) -> str:
    return f"{value * 100:.2f}%" if value < 0.1 else f"{value * 100:.1f}%"


def format_money(value: float) -> str:
    return f"{value:,.2f}"


def format_milliseconds(seconds: float) -> str:
    milliseconds = seconds * 1000
    return f"{milliseconds:.2f} ms" if milliseconds < 10 else f"{milliseconds:,.1f} ms"


def format_age(seconds: float) -> str:
    """An age as people say it: 45 s, 12 min, 3.5 h, 2.1 days."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
