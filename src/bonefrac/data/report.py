"""``bonefrac data report``: tables of a built manifest and a class-balance bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from bonefrac.data.schema import SPLITS, read_manifest
from bonefrac.errors import DataError
from bonefrac.fileio import atomic_path, read_json


def resolve_manifest(path: str | Path) -> Path:
    """A manifest folder or a manifest.csv path -> the manifest.csv path."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: manifest not found (build one with 'bonefrac data build')")
    return path


def report(
    manifest: str | Path, *, console: Console | None = None, plot: bool = True
) -> dict[str, Any]:
    """Print counts per split x label x region, duplicate groups and quarantine reasons.

    Writes ``class_balance.png`` beside the manifest when ``plot``. Returns the numbers shown
    (``split_label``, ``split_region``, ``groups``, ``quarantine_reasons``, ``plot``).
    """
    console = console or Console()
    path = resolve_manifest(manifest)
    df = read_manifest(path, require_split=True)
    folder = path.parent
    qpath = folder / "quarantine.csv"
    quarantine = pd.read_csv(qpath, keep_default_na=False) if qpath.is_file() else pd.DataFrame()
    summary = read_json(folder / "summary.json") if (folder / "summary.json").is_file() else {}
    region = df["region"].replace("", "unknown") if "region" in df.columns else "unknown"
    df = df.assign(region=region)

    # split x label
    split_label = pd.crosstab(df["split"], df["label"]).reindex(
        index=list(SPLITS), columns=[0, 1], fill_value=0
    )
    t = Table(title=f"{path}: {len(df)} images")
    for c in ("split", "not fractured (0)", "fractured (1)", "total", "% fractured"):
        t.add_column(c, justify="right" if c != "split" else "left")
    for split, row in split_label.iterrows():
        total = int(row.sum())
        pct = 100.0 * row[1] / total if total else 0.0
        t.add_row(str(split), str(row[0]), str(row[1]), str(total), f"{pct:.1f}")
    tot = split_label.sum()
    t.add_row(
        "all",
        str(tot[0]),
        str(tot[1]),
        str(int(tot.sum())),
        f"{100.0 * tot[1] / max(int(tot.sum()), 1):.1f}",
        style="bold",
    )
    console.print(t)

    # split x label x region
    srl = df.groupby(["region", "split", "label"]).size().unstack(["split", "label"], fill_value=0)
    t = Table(title="images per region (split: not fractured / fractured)")
    t.add_column("region")
    for s in SPLITS:
        t.add_column(s, justify="right")
    for reg, row in srl.iterrows():
        cells = [f"{int(row.get((s, 0), 0))} / {int(row.get((s, 1), 0))}" for s in SPLITS]
        t.add_row(str(reg), *cells)
    console.print(t)
    if "source" in df.columns and df["source"].nunique() > 1:
        t = Table(title="images per source")
        for c in ("source", *SPLITS, "fractured", "total"):
            t.add_column(c, justify="left" if c == "source" else "right")
        for src, g in df.groupby("source"):
            counts = g["split"].value_counts()
            t.add_row(
                str(src),
                *[str(int(counts.get(s, 0))) for s in SPLITS],
                str(int(g["label"].sum())),
                str(len(g)),
            )
        console.print(t)

    # duplicate groups
    sizes = df.groupby("group").size() if "group" in df.columns else pd.Series(dtype=int)
    multi = sizes[sizes > 1]
    straddle = (
        int((df.groupby("group")["split"].nunique() > 1).sum()) if "group" in df.columns else 0
    )
    groups = {
        "groups": int(len(sizes)),
        "multi_member_groups": int(len(multi)),
        "images_in_multi_member_groups": int(multi.sum()),
        "max_group_size": int(sizes.max()) if len(sizes) else 0,
        "groups_straddling_splits": straddle,
    }
    t = Table(title="duplicate groups (in the manifest)")
    t.add_column("what")
    t.add_column("count", justify="right")
    for k, v in groups.items():
        t.add_row(k.replace("_", " "), str(v))
    dup = summary.get("duplicates", {})
    if dup:
        t.add_row(
            "exact-duplicate groups (all files)",
            str(dup.get("exact_all_files", {}).get("groups", "")),
        )
        t.add_row(
            "pHash candidate pairs", str(dup.get("near", {}).get("phash_candidate_pairs", ""))
        )
        t.add_row("pixel-confirmed near pairs", str(dup.get("near", {}).get("confirmed_pairs", "")))
        t.add_row(
            "groups across sources", str(dup.get("groups", {}).get("groups_across_sources", ""))
        )
    lc = summary.get("label_conflicts", {})
    if lc:
        t.add_row(
            "label-conflict groups (quarantined)",
            f"{lc.get('groups', 0)} ({lc.get('images', 0)} images)",
        )
    console.print(t)

    # quarantine
    reasons: dict[str, int] = {}
    if len(quarantine) and "reason" in quarantine.columns:
        reasons = {str(k): int(v) for k, v in quarantine["reason"].value_counts().items()}
    t = Table(title=f"quarantine: {len(quarantine)} files")
    t.add_column("reason")
    t.add_column("files", justify="right")
    if len(quarantine) and "source" in quarantine.columns:
        t.add_column("by source")
    for reason, n in reasons.items():
        cells = [reason, str(n)]
        if "source" in quarantine.columns:
            by = quarantine[quarantine["reason"] == reason]["source"].value_counts()
            cells.append(", ".join(f"{k}: {v}" for k, v in by.items()))
        t.add_row(*cells)
    console.print(t)

    png = None
    if plot:
        png = folder / "class_balance.png"
        plot_class_balance(df, png)
        console.print(f"bar chart: {png}")
    return {
        "manifest": str(path),
        "split_label": {
            str(s): {str(k): int(v) for k, v in r.items()} for s, r in split_label.iterrows()
        },
        "split_region": {
            str(reg): {f"{s}/{lab}": int(v) for (s, lab), v in row.items()}
            for reg, row in srl.iterrows()
        },
        "groups": groups,
        "quarantine_reasons": reasons,
        "plot": str(png) if png else None,
    }


def plot_class_balance(df: pd.DataFrame, out: str | Path) -> Path:
    """Bar chart: images per split and label (left) and per region and label (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {0: "#4c78a8", 1: "#e45756"}
    names = {0: "not fractured", 1: "fractured"}
    by_split = pd.crosstab(df["split"], df["label"]).reindex(
        index=list(SPLITS), columns=[0, 1], fill_value=0
    )
    by_region = pd.crosstab(df["region"], df["label"]).reindex(columns=[0, 1], fill_value=0)
    for ax, table, title in ((axes[0], by_split, "per split"), (axes[1], by_region, "per region")):
        x = range(len(table))
        width = 0.4
        for k, lab in enumerate((0, 1)):
            pos = [i + (k - 0.5) * width for i in x]
            bars = ax.bar(pos, table[lab].values, width, color=colours[lab], label=names[lab])
            ax.bar_label(bars, fontsize=7)
        ax.set_xticks(list(x))
        ax.set_xticklabels([str(i) for i in table.index], rotation=30, ha="right")
        ax.set_ylabel("images")
        ax.set_title(f"class balance {title}")
        ax.legend()
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
