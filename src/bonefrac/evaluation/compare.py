"""``bonefrac compare``: several runs on the same images, one table, overlaid ROC curves and a
paired DeLong test of the AUC difference between the top two runs; a second ranking by AUGRC
(selective prediction, :mod:`bonefrac.evaluation.selective`).

Runs are joined on ``image_id``; they must hold exactly the same images with the same labels
(otherwise the comparison would not be paired and the error says which images differ). Each run
is scored as ``bonefrac evaluate`` scores it: its own temperature and threshold.

Runs whose predictions carry localisation columns also show AP50 and the map's hit rate
(:mod:`bonefrac.evaluation.localization_metrics`); the others show n/a.

DeLong's test uses the fast algorithm of Sun & Xu (2014), "Fast implementation of DeLong's
algorithm for comparing the areas under correlated receiver operating characteristic curves",
IEEE Signal Processing Letters 21(11): midranks give every structural component in
O(n log n) per model.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from bonefrac.errors import ConfigError, DataError
from bonefrac.evaluation import plots
from bonefrac.evaluation.localization_metrics import split_localization
from bonefrac.evaluation.tables import COMPARE_LOC_METRICS, markdown_table
from bonefrac.fileio import atomic_open, write_json
from bonefrac.metrics import METRIC_NAMES, compute_metrics, format_ci
from bonefrac.rundir import RunDir, check_name, run_probabilities
from bonefrac.rundir.predictions import IMAGE_ID, LABEL

#: Columns of the comparison: the threshold metrics, then AUGRC (selective prediction).
COMPARE_METRICS = (*METRIC_NAMES, "augrc")
LOWER_IS_BETTER = ("augrc",)

# ---------------------------------------------------------------- DeLong (Sun & Xu 2014)


def _midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    return rankdata(x, method="average")


def delong_auc_covariance(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for ``scores`` of shape (k models, n images)."""
    y = np.asarray(y_true).astype(int)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise DataError("DeLong's test needs both fractured and not-fractured images")
    k = s.shape[0]
    tx = np.stack([_midrank(pos[r]) for r in range(k)])
    ty = np.stack([_midrank(neg[r]) for r in range(k)])
    tz = np.stack([_midrank(np.concatenate([pos[r], neg[r]])) for r in range(k)])
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n  # per positive: fraction of negatives scored below it
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives scored above it
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((k, k))
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((k, k))
    return aucs, sx / m + sy / n


def delong_test(y_true: Any, prob_a: Any, prob_b: Any) -> dict[str, float]:
    """Paired two-sided DeLong test of AUC(a) == AUC(b) on the same images.

    Returns auc_a, auc_b, diff (a - b), se, z, p_value and a 95% CI of the difference.
    Identical predictions give z = 0 and p = 1.
    """
    aucs, cov = delong_auc_covariance(y_true, np.vstack([prob_a, prob_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(var) if var > 1e-15 else 0.0
    if se == 0.0:
        z, p = 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    half = 1.959963984540054 * se
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "z": float(z),
        "p_value": float(min(p, 1.0)),
        "diff_ci_low": diff - half,
        "diff_ci_high": diff + half,
    }


# ---------------------------------------------------------------- comparison


@dataclass
class CompareResult:
    split: str
    names: list[str]  # ranked, best ROC-AUC first
    metrics: dict[str, dict[str, Any]]
    best: dict[str, list[str]]  # metric -> names of the best run(s)
    test: dict[str, Any] | None
    n_images: int
    outputs: dict[str, Path] = field(default_factory=dict)
    #: run -> localisation metrics (None for a classification-only run)
    localization: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def has_localization(self) -> bool:
        return any(v is not None for v in self.localization.values())

    by_augrc: list[str] = field(default_factory=list)  # ranked, lowest AUGRC first


def _unique_names(run_dirs: list[Path]) -> list[str]:
    names = [p.resolve().name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in run_dirs]


def load_aligned(run_dirs: list[Path], split: str) -> tuple[list[str], np.ndarray, dict]:
    """Each run's probabilities on the same images, in the first run's order.

    Returns (names, labels, {name: (probs, threshold)}).
    """
    names = _unique_names(run_dirs)
    base_ids: pd.Index | None = None
    labels: np.ndarray | None = None
    runs: dict[str, tuple[np.ndarray, float]] = {}
    for name, run_dir in zip(names, run_dirs, strict=True):
        run = RunDir.open(run_dir)
        meta = run.meta()
        df = run.predictions(split)
        path = run.prediction_path(split)
        dup = df[IMAGE_ID][df[IMAGE_ID].duplicated()]
        if len(dup):
            raise DataError(
                f"{path}: image_id {dup.iloc[0]!r} appears more than once; runs are joined on "
                "image_id, so it must be unique"
            )
        df = df.set_index("image_id")
        prob = run_probabilities(df, meta)
        s = pd.Series(prob, index=df.index)
        if base_ids is None:
            base_ids, labels = df.index, df[LABEL].to_numpy()
            first = path
        else:
            missing = base_ids.difference(df.index)
            extra = df.index.difference(base_ids)
            if len(missing) or len(extra):
                ex = list(missing[:3]) + list(extra[:3])
                raise DataError(
                    f"{path} and {first} do not hold the same images ({len(missing)} missing, "
                    f"{len(extra)} extra; e.g. {ex}); compare runs evaluated on the same split "
                    "of the same manifest"
                )
            lab = df.loc[base_ids, LABEL].to_numpy()
            if not np.array_equal(lab, labels):
                bad = base_ids[lab != labels][:3]
                raise DataError(
                    f"{path} and {first} disagree on the labels of {list(bad)}; "
                    "the runs were trained on different manifests"
                )
            s = s.loc[base_ids]
        runs[name] = (s.to_numpy(dtype=float), meta.threshold)
    assert labels is not None
    return names, labels, runs


def compare_runs(
    run_dirs: list[str | Path],
    split: str = "test",
    out_dir: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> CompareResult:
    """Score every run on ``predictions/<split>.csv``, rank by ROC-AUC, DeLong-test the top two
    and write ``compare.md``, ``compare.html``, ``compare.json`` and ``roc_overlay.png`` into
    ``out_dir`` (default: ``<parent of the first run>/compare_<split>``)."""
    dirs = [Path(p) for p in run_dirs]
    if len(dirs) < 2:
        raise ConfigError("compare needs at least two run directories")
    check_name(split)
    names, y, runs = load_aligned(dirs, split)
    metrics = {
        name: compute_metrics(y, prob, thr, n_boot=n_boot, seed=seed)
        for name, (prob, thr) in runs.items()
    }
    for name, run_dir in zip(names, dirs, strict=True):
        metrics[name]["augrc"] = _run_augrc(run_dir, split, n_boot, seed)

    def auc_key(name: str) -> float:
        v = metrics[name]["roc_auc"]["value"]
        return -1.0 if v is None else v

    def augrc_key(name: str) -> float:
        v = metrics[name]["augrc"]["value"]
        return math.inf if v is None else v

    ranked = sorted(names, key=auc_key, reverse=True)
    by_augrc = sorted(names, key=augrc_key)
    best: dict[str, list[str]] = {}
    for m in COMPARE_METRICS:
        vals = {n: metrics[n][m]["value"] for n in names if metrics[n][m]["value"] is not None}
        if vals:
            top = min(vals.values()) if m in LOWER_IS_BETTER else max(vals.values())
            best[m] = [n for n, v in vals.items() if abs(v - top) < 1e-12]
    test = None
    if 0 < y.sum() < len(y):
        a, b = ranked[0], ranked[1]
        test = {"a": a, "b": b, "method": "DeLong (paired, two-sided)"}
        test.update(delong_test(y, runs[a][0], runs[b][0]))

    result = CompareResult(split, ranked, metrics, best, test, len(y), by_augrc=by_augrc)
    for name, run_dir in zip(names, dirs, strict=True):
        run = RunDir.open(run_dir)
        result.localization[name] = split_localization(
            run.predictions(split), run.prediction_path(split), n_boot=n_boot, seed=seed
        )
    if not out_dir and RunDir.open(dirs[0]).shipped:  # never write into the package
        raise ConfigError(f"{dirs[0]}: a shipped model; choose where to write with --out DIR")
    out = Path(out_dir) if out_dir else dirs[0].resolve().parent / f"compare_{split}"
    result.outputs["roc"] = plots.plot_roc_overlay(
        {n: (y, runs[n][0]) for n in ranked}, out / "roc_overlay.png", f"ROC curves ({split})"
    )
    result.outputs["markdown"] = out / "compare.md"
    with atomic_open(result.outputs["markdown"], "w", encoding="utf-8") as fh:
        fh.write(to_markdown(result))
    result.outputs["html"] = out / "compare.html"
    with atomic_open(result.outputs["html"], "w", encoding="utf-8") as fh:
        fh.write(to_html(result))
    result.outputs["json"] = out / "compare.json"
    write_json(
        result.outputs["json"],
        {
            "split": split,
            "n_images": len(y),
            "ranking": ranked,
            "ranking_augrc": by_augrc,
            "runs": {n: str(d) for n, d in zip(names, dirs, strict=True)},
            "metrics": metrics,
            "best": best,
            "auc_test": test,
            "localization": result.localization,
        },
    )
    return result


def table_rows(result: CompareResult, bold: tuple[str, str] = ("**", "**")) -> list[list[str]]:
    """Rows ``[rank, run, metric cells...]`` with the best value per column wrapped in ``bold``."""
    rows = []
    for i, name in enumerate(result.names, 1):
        cells = [str(i), name]
        for m in COMPARE_METRICS:
            text = format_ci(result.metrics[name][m])
            if name in result.best.get(m, []):
                text = f"{bold[0]}{text}{bold[1]}"
            cells.append(text)
        rows.append(cells)
    return rows


def localization_rows(result: CompareResult) -> list[list[str]]:
    """Rows ``[run, *COMPARE_LOC_METRICS]`` (``n/a`` for a run without localisation)."""
    rows = []
    for name in result.names:
        loc = result.localization.get(name) or {}
        rows.append([name, *(format_ci(loc.get(m)) for m in COMPARE_LOC_METRICS)])
    return rows


def augrc_sentence(result: CompareResult) -> str:
    """The ranking by AUGRC (lower first: fewer undetected errors over all coverages)."""
    parts = [f"{n} ({format_ci(result.metrics[n]['augrc'])})" for n in result.by_augrc]
    return "Ranked by AUGRC (lower is better): " + " < ".join(parts)


def _run_augrc(run_dir: Path, split: str, n_boot: int, seed: int) -> dict[str, Any]:
    """The run's AUGRC on ``split`` with its refer rule's uncertainty (margin without one)."""
    from bonefrac.evaluation.selective import selective_entry

    run = RunDir.open(run_dir)
    meta = run.meta()
    df = run.predictions(split)
    entry, _, _ = selective_entry(run, split, df[LABEL].to_numpy(),
                                  run_probabilities(df, meta), meta, n_boot=n_boot,
                                  seed=seed)  # fmt: skip
    return entry["augrc"]


def auc_test_sentence(result: CompareResult) -> str:
    t = result.test
    if not t:
        return "No AUC test: the split has a single class."
    return (
        f"{t['method']}: {t['a']} vs {t['b']}, AUC difference {t['diff']:+.4f} "
        f"(95% CI {t['diff_ci_low']:+.4f} to {t['diff_ci_high']:+.4f}), z = {t['z']:.3f}, "
        f"p = {t['p_value']:.4g}"
    )


def to_markdown(result: CompareResult) -> str:
    head = ["rank", "run", *COMPARE_METRICS]
    lines = [
        f"# Run comparison on `{result.split}` ({result.n_images} images)",
        "",
        "Value [95% CI], stratified bootstrap; best per column in **bold**; "
        "each run at its own threshold.",
        "",
        markdown_table(head, table_rows(result)),
    ]
    if result.has_localization:
        lines += [
            "",
            "Localisation (hit rate of the map's peak; COCO AP at IoU 0.5):",
            "",
            markdown_table(["run", *COMPARE_LOC_METRICS], localization_rows(result)),
        ]
    lines += ["", augrc_sentence(result), "", auc_test_sentence(result), "",
              "![ROC curves](roc_overlay.png)", ""]  # fmt: skip
    return "\n".join(lines)


def to_html(result: CompareResult) -> str:
    from bonefrac.evaluation.report import png_data_uri

    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in ("rank", "run", *COMPARE_METRICS))
    body = ""
    for row in table_rows(result, bold=("\x00", "\x01")):
        cells = ""
        for c in row:
            text = e(c).replace("\x00", "<b>").replace("\x01", "</b>")
            style = ' style="background:#e8f5e9"' if "<b>" in text else ""
            cells += f"<td{style}>{text}</td>"
        body += f"<tr>{cells}</tr>"
    loc = ""
    if result.has_localization:
        loc_head = "".join(f"<th>{e(h)}</th>" for h in ("run", *COMPARE_LOC_METRICS))
        loc_body = "".join(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
            for row in localization_rows(result)
        )
        loc = f"<h2>Localisation</h2><table><tr>{loc_head}</tr>{loc_body}</table>"
    img = ""
    roc = result.outputs.get("roc")
    if roc and Path(roc).is_file():
        img = f'<img src="{png_data_uri(roc)}" alt="ROC curves" style="max-width:520px">'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>bonefrac compare ({e(result.split)})</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25rem .5rem;font-size:.9rem}th{background:#f3f3f3}"
        "</style></head><body>"
        f"<h1>Run comparison on {e(result.split)} ({result.n_images} images)</h1>"
        "<p>Value [95% CI], stratified bootstrap; best per column in bold; each run at its own "
        f"threshold.</p><table><tr>{head}</tr>{body}</table>{loc}"
        f"<p>{e(augrc_sentence(result))}</p>"
        f"<p>{e(auc_test_sentence(result))}</p>{img}</body></html>\n"
    )
