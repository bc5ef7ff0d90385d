"""The study report's figures: probe quality against mask quality and against resolution,
with the random-init (±1 std band), supervised and chance references drawn on every panel."""

from __future__ import annotations

from pathlib import Path

from detlab.pipelines.report_terms import GLOBAL, METRIC_NAMES, main_metrics


def draw_references(ax, refs: dict[str, dict], chance: dict, key: str) -> None:
    """Random init (line and ±1 std band), supervised and chance as horizontal lines."""
    rnd, sup = (refs.get(k, {}).get("metrics", {}).get(key, {}) for k in ("random", "supervised"))
    if rnd.get("n"):
        m, sd = rnd["mean"], rnd["std"] or 0.0
        ax.axhline(m, color="grey", label="random init (band: ±1 std)")
        ax.axhspan(m - sd, m + sd, color="grey", alpha=0.2)
    if sup.get("n"):
        ax.axhline(sup["mean"], color="green", ls="--", label="supervised (labels)")
    if chance.get(key) is not None:
        ax.axhline(chance[key], color="black", ls=":", label="chance")


def panels(keys: list[str], title: str, caption: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(keys))
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 4.2), squeeze=False)
    fig.suptitle(title)
    fig.text(0.5, 0.01, caption, ha="center", fontsize=8)
    return plt, fig, axes[0]


def finish(plt, fig, axes, out: Path) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_mask_quality(s: dict, out: Path) -> None:
    keys = main_metrics(s["metrics"])
    caption = "points: mean over seeds; error bars: ±1 sample std over seeds (n seeds per row)"
    plt, fig, axes = panels(keys, "Frozen-probe quality vs pretraining mask quality", caption)
    pre = [r for r in s["rows"].values() if r["kind"] == "pretrain"]
    for ax, k in zip(axes, keys, strict=False):
        for r in (r for r in pre if r["metrics"][k]["n"]):
            x, d = r["abo"] if r["abo"] is not None else 0.0, r["metrics"][k]
            fmt = "s" if r["row"] == GLOBAL else "o"
            ax.errorbar(x, d["mean"], yerr=d["std"] or 0.0, fmt=fmt, capsize=3, label=r["label"])
        draw_references(ax, s["rows"], s["chance"], k)
        ax.set(xlabel="mask quality (abo)", ylabel=METRIC_NAMES[k], title=METRIC_NAMES[k])
    finish(plt, fig, axes, out)


def plot_resolution(s: dict, out: Path) -> None:
    keys = s["metrics"]
    caption = "lines: mean over seeds; error bars: ±1 sample std over seeds"
    plt, fig, axes = panels(keys, "Frozen-probe quality vs pretraining resolution", caption)
    for ax, k in zip(axes, keys, strict=False):
        for mask, by_res in s["table"].items():
            pts = [(r, row["metrics"][k]) for r, row in by_res.items() if row["metrics"][k]["n"]]
            xs, ds = zip(*pts, strict=True) if pts else ((), ())
            ys, err = [d["mean"] for d in ds], [d["std"] or 0.0 for d in ds]
            ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label=mask)
        draw_references(ax, s["references"], s["chance"], k)
        ax.set(xlabel="pretraining resolution (px)", ylabel=METRIC_NAMES[k], title=METRIC_NAMES[k])
    finish(plt, fig, axes, out)
