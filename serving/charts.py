"""Charts for the pages, drawn on the server as inline SVG (no CDN, no script), so the pages
work offline and in a mail attachment."""

from __future__ import annotations

import functools
import html
import io
import re
import uuid
from collections.abc import Callable, Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

POSITIVE = "#2e7d32"
NEGATIVE = "#c62828"
NEUTRAL = "#546e7a"
# The charts' own style, applied while each is drawn: neither pyplot (no backend to choose, so a
# notebook keeps its inline plots; no GUI from a server thread) nor the global rcParams.
# Column names are text, not TeX: `Spend $\frac$` would stop the drawing with a parse error.
STYLE = {"svg.fonttype": "none", "font.size": 12, "axes.spines.top": False, "axes.spines.right": False,
         "text.parse_math": False}  # fmt: skip


def _styled(font_size: float = 12) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Draw in the charts' style, with text of `font_size` points."""

    def decorate(draw: Callable[..., str]) -> Callable[..., str]:
        @functools.wraps(draw)
        def styled(*args, **kwargs) -> str:
            with matplotlib.rc_context({**STYLE, "font.size": font_size}):
                return draw(*args, **kwargs)

        return styled

    return decorate


# Text of the charts with factor names (5.5 inches and their labels, shown about 510 pixels wide
# in a half-page column on a laptop): at 12 points it came out at 9.5 pixels.
WIDE_FONT = 16
# Text of the small charts (calibration, deciles): 14 points is 12 pixels or more in a third of
# the model page, and never more than 19 (a chart is not drawn larger than its own size).
SMALL_CHART_FONT = 14


def figure(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure outside pyplot: no backend is chosen or changed (a notebook keeps its own), and
    none is needed to save it."""
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


WIDE_CHART_PIXELS = 600  # as base.html's phone layout begins


def _svg(fig: Figure, label: str) -> str:
    """The figure as an SVG element that scales with its container; `label`, its data in words,
    is what a screen reader says (else it reads out the tick labels)."""
    buffer = io.StringIO()
    # Several charts share one page: ids (clip paths, markers) must differ between them, or a
    # chart would clip itself with another's shapes.
    with matplotlib.rc_context({"svg.hashsalt": uuid.uuid4().hex}):
        # No date in the picture: it was the machine's local time without an offset, and made each
        # report differ from the last for nothing.
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    # The drawing's own text (tick labels, numbers) hidden from screen readers, which Chrome
    # otherwise reads after the label: the label says it all, in order.
    text = re.sub(r'<g id="figure_1">', '<g id="figure_1" aria-hidden="true">', text, count=1)
    # Width from the page, not fixed points: readable on a phone and on a laptop.
    # At most its own size (points to pixels): a chart alone in a wide box keeps its text size.
    points = float(re.search(r'viewBox="[\d.]+ [\d.]+ ([\d.]+)', text)[1])
    pixels = points * 4 / 3
    # Drawn wider than a phone: there it keeps a readable width and scrolls (base.html).
    wide = ' class="chart-wide"' if pixels > WIDE_CHART_PIXELS else ""
    named = (
        f'width="100%"{wide} style="max-width: {pixels:.0f}px" role="img" aria-label="{html.escape(label, quote=True)}"'
    )
    return re.sub(r'<svg([^>]*?) width="[^"]+" height="[^"]+"', lambda m: f"<svg{m[1]} {named}", text, count=1)


def _pairs(labels: Sequence[str], values: Sequence[float], shown: str = "{:.3g}") -> str:
    return "; ".join(f"{label}: {shown.format(value)}" for label, value in zip(labels, values, strict=True))


@_styled(WIDE_FONT)
def waterfall(base: float, steps: Sequence[tuple[str, float]], final: float) -> str:
    """From the base score (a typical lead's), each contribution in points, to the lead's score."""
    # The start is the model's score for a typical lead, not the conversion rate: named so.
    labels = ["Typical lead", *[label for label, _ in steps], "This lead"]
    fig, ax = figure(5.5, 0.4 * len(labels) + 0.8)
    level = base
    ax.barh(0, base, color=NEUTRAL)
    for i, (_, points) in enumerate(steps, start=1):
        ax.barh(i, points, left=level, color=POSITIVE if points >= 0 else NEGATIVE)
        ax.text(max(level, level + points) + 0.3, i, f"{points:+.1f}", va="center")
        level += points
    ax.barh(len(labels) - 1, final, color=NEUTRAL)
    ax.text(final + 0.3, len(labels) - 1, f"{final:.1f}", va="center")
    ax.text(base + 0.3, 0, f"{base:.1f}", va="center")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("score (0-100)")
    words = _pairs([label for label, _ in steps], [points for _, points in steps], "{:+.1f}")
    return _svg(fig, f"Score from a typical lead's {base:.1f} to this lead's {final:.1f}: {words}")


def waterfall_rows(base: float, steps: Sequence[tuple[str, float]], final: float) -> list[dict]:
    """The waterfall as rows for a phone's screen, each label over its bar: position and width
    of each bar in percent of the span the scores cover (the picture is too wide to read there)."""
    levels = [base]
    for _, points in steps:
        levels.append(levels[-1] + points)
    low, high = min(0.0, *levels, final), max(*levels, final)
    span = (high - low) or 1.0

    def bar(start: float, end: float) -> dict:
        left, right = sorted((start, end))
        return {"left": round(100 * (left - low) / span, 2), "width": max(round(100 * (right - left) / span, 2), 0.5)}

    rows = [{"label": "Typical lead", "value": f"{base:.1f}", "kind": "total", **bar(0.0, base)}]
    for (label, points), start in zip(steps, levels, strict=False):
        kind = "up" if points >= 0 else "down"
        rows.append({"label": label, "value": f"{points:+.1f}", "kind": kind, **bar(start, start + points)})
    rows.append({"label": "This lead", "value": f"{final:.1f}", "kind": "total", **bar(0.0, final)})
    return rows


@_styled(WIDE_FONT)
def horizontal_bars(labels: Sequence[str], values: Sequence[float], xlabel: str) -> str:
    fig, ax = figure(5.5, 0.38 * len(labels) + 0.8)
    ax.barh(range(len(labels)), values, color=NEUTRAL)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    return _svg(fig, f"{xlabel}: {_pairs(labels, values)}")


@_styled(SMALL_CHART_FONT)
def calibration(predicted: Sequence[float], observed: Sequence[float]) -> str:
    """Observed conversion against the predicted probability (the diagonal is perfect)."""
    fig, ax = figure(4.5, 4)
    top = max([*predicted, *observed, 0.05]) * 1.05
    ax.plot([0, top], [0, top], color="#757575", linestyle="--", label="perfect")  # 4.6:1 on white
    ax.plot(predicted, observed, marker="o", color=POSITIVE, label="model")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed conversion")
    ax.legend(frameon=False)
    pairs = "; ".join(f"predicted {p:.3f}, observed {o:.3f}" for p, o in zip(predicted, observed, strict=True))
    return _svg(fig, f"Observed conversion against predicted probability (equal when calibrated): {pairs}")


@_styled(SMALL_CHART_FONT)
def columns(
    labels: Sequence[str],
    values: Sequence[float],
    ylabel: str,
    reference: float | None = None,
    *,
    spoken: Sequence[str] | None = None,
    shown: str = "{:.3g}",
) -> str:
    """Vertical bars, e.g. conversion by decile, with an optional reference line. A screen reader
    says `spoken` (default `labels`) with each value in `shown`."""
    fig, ax = figure(5.5, 3)
    ax.bar(range(len(labels)), values, color=NEUTRAL)
    ax.set_xticks(range(len(labels)), labels)
    if reference is not None:
        ax.axhline(reference, color=NEGATIVE, linestyle="--", linewidth=1, label="average")
        ax.legend(frameon=False)
    ax.set_ylabel(ylabel)
    if shown.endswith("%}"):  # the axis in percent too, as the words and the tables say it
        ax.yaxis.set_major_formatter(PercentFormatter(1, decimals=0))
    average = f"; average {shown.format(reference)}" if reference is not None else ""
    return _svg(fig, f"{ylabel}: {_pairs(spoken or labels, values, shown)}{average}")


@_styled(WIDE_FONT)
def beeswarm(names: Sequence[str], points: Sequence[Sequence[float]], colours: Sequence[Sequence[float]]) -> str:
    """SHAP summary: each lead a dot at its effect (score points) on each factor's row,
    coloured by the lead's value of that factor (low blue to high red, grey when missing or
    not a number)."""
    import numpy as np

    rng = np.random.default_rng(0)
    fig, ax = figure(5.5, 0.5 * len(names) + 0.9)
    for row, (effects, shades) in enumerate(zip(points, colours, strict=True)):
        effects, shades = np.asarray(effects, dtype=float), np.asarray(shades, dtype=float)
        jitter = row + rng.uniform(-0.28, 0.28, len(effects))
        known = ~np.isnan(shades)
        ax.scatter(effects[~known], jitter[~known], s=6, color="#78909c", linewidths=0)  # 3.3:1 on white
        # An outline gives every dot 3:1 contrast on white (the colour map's pale middle has 1.4:1).
        ax.scatter(effects[known], jitter[known], s=6, c=shades[known], cmap="coolwarm", vmin=0, vmax=1,
                   edgecolors="#455a64", linewidths=0.3)  # fmt: skip
    ax.axvline(0, color="#757575", linewidth=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("effect on the score (points)\ncolour: the lead's value, low (blue) to high (red)")
    spans = "; ".join(
        f"{name} from {np.nanmin(effects):+.1f} to {np.nanmax(effects):+.1f}" if len(effects) else f"{name}: none"
        for name, effects in zip(names, (np.asarray(e, dtype=float) for e in points), strict=True)
    )
    return _svg(fig, f"Effect of each factor on the score, in points, over the leads: {spans}")
