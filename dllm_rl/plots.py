"""Training-curve figures like the ESPO paper's Fig. 1-3: one PNG per task, one line per model +
algorithm (+ variant label), the mean over seeds with a shaded error band (matplotlib, Agg backend)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes
from .results import curves


_LINESTYLES = ("-", "--", ":", "-.")
_COLORS = 10  # matplotlib's default colour cycle (tab10)


def line_style(i: int) -> tuple[str, str]:
    """Colour and dash of the i-th line: tab10's colours, then again with the next dash, so up to 40 lines
    stay distinct (a comparison folder easily holds more than ten algorithm x rate rows)."""
    return f"C{i % _COLORS}", _LINESTYLES[(i // _COLORS) % len(_LINESTYLES)]


def smoothing_label(results: list[dict[str, Any]], key: str, smooth: int) -> str:
    """What a smoothed curve averages, in words: points of the curve, and how many steps apart they
    are (validation curves are logged every eval.every steps, not every step)."""
    if smooth <= 1:
        return ""
    from .results import _points

    gaps = sorted({b - a for r in results for (a, _), (b, _) in zip(_points(r, key), _points(r, key)[1:])})
    apart = "" if gaps in ([], [1]) else f", {gaps[0]} steps apart" if len(gaps) == 1 else f", {gaps[0]}-{gaps[-1]} steps apart"
    return f" (moving average of {smooth} points{apart})"


def plot_curves(results: list[dict[str, Any]], folder: str | Path, key: str = "reward", smooth: int = 1,
                error: str = "std", log_scale: bool = False) -> list[Path]:
    """Write ``<key>_<task>.png`` for every task whose runs logged ``key``; returns the files written.
    ``log_scale``: a logarithmic y axis (non-positive values are left out of the plot)."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    written = []
    for task, lines in curves(results, key, smooth, error).items():
        many = len(lines) > 6  # legend beside the axes instead of over the curves
        fig, ax = plt.subplots(figsize=(9.6 if many else 6.4, 4.0), dpi=120)
        for i, (name, c) in enumerate(lines.items()):
            n = int(max(c["n"]))
            color, dash = line_style(i)
            ax.plot(c["step"], c["mean"], label=f"{name} (n={n})", linewidth=1.6, color=color, linestyle=dash)
            lo = [m - e for m, e in zip(c["mean"], c["err"])]
            hi = [m + e for m, e in zip(c["mean"], c["err"])]
            ax.fill_between(c["step"], lo, hi, color=color, alpha=0.12 if many else 0.2, linewidth=0)
        ax.set_xlabel("RL step")
        ax.set_ylabel(key + smoothing_label([r for r in results if r["task"] == task], key, smooth))
        if log_scale:
            ax.set_yscale("log")
        ax.set_title(f"{task}: mean ± {error} over seeds")
        ax.grid(alpha=0.3)
        if many:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = Path(folder) / f"{key}_{task}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written
