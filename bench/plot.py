#!/usr/bin/python3
"""Bar chart of the Stretto/peer ratios written by `stretto-bench --ratios`.

    /usr/bin/python3 bench/plot.py RATIOS.csv OUT.png

One panel per section (nbd, glusterfs, fuse); one horizontal bar per ratio,
log scale, a line at 1.0 (parity). Green: Stretto ahead, red: behind.
Needs Debian's python3-matplotlib (scripts/test.sh installs it).
"""
import csv
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


def main():
    src, out = sys.argv[1], sys.argv[2]
    sections = {}
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            try:
                v = float(row["ratio"])
            except ValueError:
                continue
            if not math.isfinite(v) or v <= 0:
                continue
            sections.setdefault(row["section"], []).append((row["label"], v))
    if not sections:
        print("plot: no ratios in", src, file=sys.stderr)
        return 1
    heights = [max(2.0, 0.22 * len(v) + 1.0) for v in sections.values()]
    fig, axes = plt.subplots(
        len(sections),
        1,
        figsize=(11, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (name, rows) in zip(axes[:, 0], sections.items()):
        labels = [r[0] for r in rows]
        vals = [r[1] for r in rows]
        colors = ["#2a9d4a" if v >= 1 else "#d04040" for v in vals]
        y = range(len(rows))
        ax.barh(y, vals, color=colors)
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{name}: Stretto / peer (log scale, > 1 = Stretto ahead)", fontsize=9)
        ax.tick_params(axis="x", which="both", labelsize=7)
        fmt = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(fmt)
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
