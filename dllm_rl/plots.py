"""Training-curve figures like the ESPO paper's Fig. 1-3: one PNG per task, one line per model +
algorithm (+ variant label), the mean over seeds with a shaded error band (matplotlib, Agg backend)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .results import atomic_write_bytes, curves


def plot_curves(results: list[dict[str, Any]], folder: str | Path, key: str = "reward", smooth: int = 1,
                error: str = "std") -> list[Path]:
    """Write ``<key>_<task>.png`` for every task whose runs logged ``key``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    written = []
    for task, lines in curves(results, key, smooth, error).items():
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for name, c in lines.items():
            n = int(max(c["n"]))
            (line,) = ax.plot(c["step"], c["mean"], label=f"{name} (n={n})", linewidth=1.6)
            lo = [m - e for m, e in zip(c["mean"], c["err"])]
            hi = [m + e for m, e in zip(c["mean"], c["err"])]
            ax.fill_between(c["step"], lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"training {key}" + (f" ({smooth}-step mean)" if smooth > 1 else ""))
        ax.set_title(f"{task}: mean ± {error} over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = Path(folder) / f"{key}_{task}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written
