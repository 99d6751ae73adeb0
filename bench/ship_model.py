"""Package a trained run as a shipped model (src/bonefrac/shipped/NAME; issue 25).

    python bench/ship_model.py --runs RUN_SEED1 RUN_SEED2 ... --name lite0-loc-1

With several runs (one recipe, several seeds), ships the one with the best val ROC-AUC (the
checkpoint's monitor, ``best_score``; never test) and lists every seed's test figures in the
card; with ``--ensemble DIR`` it builds the ensemble of all of them there (``bonefrac
ensemble``; ``--ood none``: the appearance rule as its out-of-scope detector) and ships that. Prints the parity check and the folder's size. ``make shipped-model`` trains the runs and
calls this.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import git_commit, machine  # noqa: E402

from bonefrac.ensembling import build_ensemble  # noqa: E402
from bonefrac.evaluation.model_card import CardInputs, SeedResult, source_figures  # noqa: E402
from bonefrac.packaging import package_run  # noqa: E402
from bonefrac.rundir import RunDir  # noqa: E402


def _seed_result(run: RunDir) -> SeedResult:
    meta = run.meta()
    test = {k: {"roc_auc": (v["roc_auc"] or {}).get("value")}
            for k, v in source_figures(run, n_boot=0).items()}  # fmt: skip
    return SeedResult(int(meta.get("seed") or -1), meta.get("best_score"), test)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", type=Path, required=True)
    ap.add_argument("--name", required=True, help="folder name, e.g. lite0-loc-1")
    ap.add_argument("--root", type=Path, default=None, help="shipped folder (default: package)")
    ap.add_argument("--commit", default=None, help="commit the runs were trained at")
    ap.add_argument("--hardware", default=None, help="what they were trained on")
    ap.add_argument("--command", default="make shipped-model")
    ap.add_argument("--no-default", action="store_true", help="do not point 'default' at it")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--ensemble", type=Path, default=None,
                    help="build the ensemble of --runs here and ship it")  # fmt: skip
    ap.add_argument("--ood", default=None, help="with --ensemble: its deploy.ood")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    runs = [RunDir.open(r) for r in args.runs]
    if args.ensemble is not None:
        built = build_ensemble(
            [r.path for r in runs], args.ensemble, force=args.force, ood=args.ood
        )
        chosen = RunDir.open(built.path)
    else:
        chosen = max(runs, key=lambda r: float(r.meta().get("best_score") or float("-inf")))
    seeds = [_seed_result(r) for r in runs] if len(runs) > 1 else []
    card = CardInputs(commit=args.commit or git_commit(), hardware=args.hardware or machine(),
                      command=args.command, seeds=seeds)  # fmt: skip
    report = package_run(chosen.path, args.name, root=args.root, default=not args.no_default,
                         card=card, force=args.force)  # fmt: skip
    print(f"shipped {chosen.path} as {report.path} ({report.weights_dtype} weights, "
          f"{report.bytes / 1e6:.2f} MB)")  # fmt: skip
    print("parity (fp32 vs stored weights, test split):")
    print(json.dumps(report.parity, indent=2))
    for step, line in report.deploy.items():
        print(f"deploy {step}: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
