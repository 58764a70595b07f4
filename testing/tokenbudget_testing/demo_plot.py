"""The demo's picture: spend over time with the ladder, and thinking budgets before and after calibration.

matplotlib with the Agg backend renders a PNG without a display (a CI runner, an ssh session). The size is
fixed (no tight bounding box), so a test can check the file is the picture it should be.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from tokenbudget_api.tokenbudget import Stage
from tokenbudget_testing.demo_ladder import THRESHOLDS, LadderRun
from tokenbudget_testing.demo_thinking import Calibration

WIDTH_IN, HEIGHT_IN, DPI = 14.0, 6.0, 100  # 1400 x 600 pixels
STAGE_COLOURS = {Stage.NORMAL: "#e8f5e9", Stage.ALERT: "#fff8e1", Stage.THROTTLE: "#ffe0b2",
                 Stage.DOWNGRADE: "#f3e5f5", Stage.BLOCK: "#ffcdd2"}


def draw(ladder: LadderRun, calibration: Calibration, path: Path) -> Path:
    fig, (spend, thinking) = plt.subplots(1, 2, figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI,
                                          gridspec_kw={"width_ratios": [3, 2]})
    _spend(spend, ladder)
    _thinking(thinking, calibration)
    fig.suptitle("tokenbudget demo: a team budget on its ladder, and a ThinkTier calibrating")
    fig.subplots_adjust(left=0.05, right=0.98, top=0.88, bottom=0.12, wspace=0.18)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _spend(ax: Axes, ladder: LadderRun) -> None:
    samples = ladder.samples
    if not samples:
        return
    calls = list(range(1, len(samples) + 1))
    # Stage bands: each call's stage on the enforced budget, as a background span.
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or samples[i].stage is not samples[start].stage:
            ax.axvspan(start + 0.5, i + 0.5, color=STAGE_COLOURS[samples[start].stage], lw=0)
            mid = (start + i + 1) / 2
            narrow = i - start < 6  # a few calls wide: the name stands upright
            ax.text(mid, 98 if narrow else 104, samples[start].stage.value, ha="center", fontsize=8,
                    rotation=90 if narrow else 0, va="top" if narrow else "baseline")
            start = i
    for stage, at in THRESHOLDS.items():
        ax.axhline(at, ls="--", lw=0.8, color="grey")
        ax.text(0.7, at + 0.8, f"{stage.value} {at}%", fontsize=7, color="dimgrey")
    ax.plot(calls, [s.enforce_percent for s in samples], lw=2, color="#1565c0", label="Enforce")
    # Drawn over the enforcing line, which it follows (a DryRun budget's windows count only what enforcement
    # would have let through): dotted on top, so both stay visible where they coincide.
    ax.plot(calls, [s.twin_percent for s in samples], lw=2, ls=(0, (1, 2)), color="#ffb300", label="DryRun twin",
            zorder=3)
    ax.set_xlim(0.5, len(samples) + 0.5)
    ax.set_ylim(0, 112)
    ax.set_xlabel("call")
    ax.set_ylabel("% of the hourly token limit")
    ax.set_title("spend over time, with the ladder's thresholds and stages")
    ax.legend(loc="lower right")


def _thinking(ax: Axes, calibration: Calibration) -> None:
    names = list(calibration.classes)
    if not names:
        return
    xs = range(len(names))
    before = [calibration.before(n) for n in names]
    p95 = [calibration.classes[n].p95 or 0 for n in names]
    after = [calibration.classes[n].recommended_budget_tokens or 0 for n in names]
    width = 0.27
    ax.bar([x - width for x in xs], before, width, label="tier budget before", color="#90a4ae")
    ax.bar(list(xs), p95, width, label="P95 thinking used", color="#ffb74d")
    ax.bar([x + width for x in xs], after, width, label="recommended after", color="#43a047")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("thinking tokens per call")
    ax.set_title("thinking per class, before and after calibration")
    ax.legend()
