"""Old rule vs new rule on a run's own val/test predictions, per source, misses first.

    python bench/decision_rules.py RUN [RUN ...] [--n-boot 1000]

For each run (a run directory or a shipped name) both rules are fitted on its val predictions
at its temperature, then applied to val and test:

- old: the f1 threshold with a refer band on ``p_error`` answering 90 % of val (the default
  until the two-cut rule);
- new: the two cuts, rule-out at val sensitivity ``--sensitivity`` (0.95) and rule-in at val
  specificity ``--specificity`` (0.95).

Prints a markdown table per run: miss rate, normals cleared, referred and PPV of fracture
calls with 95 % bootstrap CIs, per split and source. Reads only the predictions (no model).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from bonefrac.evaluation.tables import markdown_table
from bonefrac.evaluation.thresholds import choose_threshold, fit_rule_out
from bonefrac.metrics import coverage_cutoff, decision_metrics, format_ci
from bonefrac.rundir import (
    ModelMeta,
    ReferRule,
    RunDir,
    error_probability,
    resolve_run,
    run_probabilities,
)
from bonefrac.rundir.predictions import LABEL, SOURCE


def _read(run: RunDir, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    df = run.predictions(split)
    return df, run_probabilities(df, run.meta())


def rules(meta: ModelMeta, y_val: np.ndarray, p_val: np.ndarray, sens: float, spec: float) -> dict:
    """Both rules fitted on val, as ``meta`` copies whose ``decisions`` (the one rule the
    Predictor applies) give each image's call: ``{name: callable(prob) -> decisions}``."""
    t_f1 = choose_threshold(y_val, p_val, "f1")
    band = coverage_cutoff(error_probability(p_val, t_f1), 0.9)
    rule_in = choose_threshold(y_val, p_val, f"specificity:{spec:g}")
    rule_out = min(fit_rule_out(y_val, p_val, sens)["cut"], rule_in)
    refer = ReferRule(score="p_error", coverage=0.9, cutoff=band, threshold=t_f1,
                      temperature=meta.temperature)  # fmt: skip
    old = meta.model_copy(update={"threshold": t_f1, "rule_out": None, "refer": refer})
    new = meta.model_copy(update={"threshold": rule_in, "rule_out": rule_out, "refer": None})
    cuts = {"old": f"f1 threshold {t_f1:.3f}, p_error band > {band:.3f}",
            "new": f"rule-out {rule_out:.3f}, rule-in {rule_in:.3f}"}  # fmt: skip
    return {
        "old": lambda p: np.asarray(old.decisions(p, error_probability(p, t_f1)), dtype=object),
        "new": lambda p: np.asarray(new.decisions(p), dtype=object),
        "cuts": cuts,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--sensitivity", type=float, default=0.95)
    ap.add_argument("--specificity", type=float, default=0.95)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    for name in args.runs:
        run = RunDir(resolve_run(name))
        val, p_val = _read(run, "val")
        fitted = rules(
            run.meta(), val[LABEL].to_numpy(int), p_val, args.sensitivity, args.specificity
        )
        print(f"\n## {name}\n\nold: {fitted['cuts']['old']}; new: {fitted['cuts']['new']}\n")
        rows = []
        for split in ("val", "test"):
            df, p = _read(run, split)
            y = df[LABEL].to_numpy(int)
            sources = (
                df[SOURCE].astype(str) if SOURCE in df.columns else pd.Series(["all"] * len(df))
            )
            groups = {s: (sources == s).to_numpy() for s in sorted(sources.unique())}
            if len(groups) > 1:
                groups["all"] = np.ones(len(df), bool)
            for source, mask in groups.items():
                for rule in ("old", "new"):
                    m = decision_metrics(y[mask], fitted[rule](p[mask]), n_boot=args.n_boot)
                    rows.append([split, source, f"{int(mask.sum())} ({int(y[mask].sum())})", rule,
                                 *(format_ci(m[k]) for k in ("miss_rate", "normals_cleared",
                                                            "referred", "fracture_ppv"))])  # fmt: skip
        head = ["split", "source", "images (fractured)", "rule", "miss rate", "normals cleared",
                "referred", "PPV of fracture calls"]  # fmt: skip
        print(markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
