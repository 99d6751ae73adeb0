"""MODEL_CARD.md of a shipped model: what it was trained on, how, how well (per source, with
95% CIs), what it is for and what it is not.

Every figure comes from the run directory itself (model.json, config.yaml, the test
predictions at the stored threshold and temperature), so the card cannot drift from the model
it sits beside; :class:`CardInputs` carries what a run does not record (the commit, the
hardware, the command that rebuilds it, the other seeds trained with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bonefrac.evaluation.localization_metrics import localization_metrics, read_inputs
from bonefrac.evaluation.tables import markdown_table
from bonefrac.fileio import atomic_open
from bonefrac.metrics import compute_metrics, decision_metrics, format_ci
from bonefrac.rundir import RunDir, run_decisions, run_probabilities
from bonefrac.rundir.predictions import LABEL, SOURCE, TRUE_BOXES
from bonefrac.rundir.shipped import CARD_TEXT_FILE, MODEL_CARD

#: How the card names a backbone (``model.json`` ``architecture`` -> its published name).
ARCHITECTURE_NAMES = {f"efficientnet_lite{n}": f"EfficientNet-Lite{n}" for n in range(3)}
#: The card's dataset and licence text, data beside the shipped models (``shipped/card_text.json``).
CARD_TEXT: dict[str, Any] = json.loads(CARD_TEXT_FILE.read_text(encoding="utf-8"))
SOURCE_NAMES: dict[str, str] = CARD_TEXT["source_names"]


@dataclass
class SeedResult:
    """Another seed trained with the shipped recipe: its val score (what chose) and test."""

    seed: int
    val_roc_auc: float | None
    test: dict[str, dict[str, Any]]  # source -> metric -> value


@dataclass
class CardInputs:
    """What the run directory does not record."""

    commit: str = "unknown"
    hardware: str = "unknown"
    command: str = "make shipped-model"
    seeds: list[SeedResult] = field(default_factory=list)
    n_boot: int = 1000


def source_figures(run: RunDir, split: str = "test", n_boot: int = 1000) -> dict[str, Any]:
    """source (and ``all``) -> metric entries at the run's threshold and temperature."""
    meta = run.meta()
    df = run.predictions(split)
    probs = run_probabilities(df, meta)
    decisions = np.asarray(run_decisions(df, meta), dtype=object)
    labels = df[LABEL].to_numpy(int)
    sources = df[SOURCE].astype(str) if SOURCE in df.columns else pd.Series(["all"] * len(df))
    inputs = read_inputs(df, run.prediction_path(split)) if TRUE_BOXES in df.columns else None
    groups = {s: np.flatnonzero((sources == s).to_numpy()) for s in sorted(sources.unique())}
    if len(groups) > 1:
        groups["all"] = np.arange(len(df))
    out: dict[str, Any] = {}
    for name, idx in groups.items():
        m = compute_metrics(labels[idx], probs[idx], meta.threshold, n_boot=n_boot)
        row: dict[str, Any] = dict(decision_metrics(labels[idx], decisions[idx], n_boot=n_boot))
        row.update({k: m[k] for k in ("roc_auc", "sensitivity", "specificity")})
        row["support"] = m["support"]
        if inputs is not None:
            loc = localization_metrics(inputs.subset(idx), n_boot=n_boot)
            row["hit_rate"] = loc.get("hit_rate")
            row["ap50_boxed"] = loc.get("ap50_boxed")
            row["n_boxed"] = int(loc["localization"]["support"]["n_with_boxes"])
        out[name] = row
    return out


def _manifest_counts(manifest: str | None) -> pd.DataFrame | None:
    if not manifest or not Path(manifest).is_file():
        return None
    df = pd.read_csv(manifest, usecols=["source", "split", "label"])
    return df.groupby(["source", "split"])[LABEL].agg(["size", "sum"])


def _split_seed(manifest: str | None) -> str:
    """The split seed from the ``summary.json`` that ``bonefrac data build`` wrote beside the
    manifest; "not recorded" without one (a manifest made another way)."""
    summary = Path(manifest).parent / "summary.json" if manifest else None
    if summary is None or not summary.is_file():
        return "not recorded"
    seed = (json.loads(summary.read_text(encoding="utf-8")).get("split") or {}).get("seed")
    return "not recorded" if seed is None else str(seed)


def card_text(run: RunDir, name: str, inputs: CardInputs) -> str:
    """The card's markdown (no filesystem paths)."""
    meta = run.meta()
    cfg = run.config()
    figures = source_figures(run, n_boot=inputs.n_boot)
    backbone = ARCHITECTURE_NAMES.get(meta.architecture, meta.architecture)
    outputs = (
        " with an FCOS detector head: one fracture probability per radiograph, a fracture map "
        "and fracture boxes"
        if meta.localize
        else ": one fracture probability per radiograph"
    )
    lines = [
        f"# Model card: {name}",
        "",
        f"{backbone} ({meta.architecture}) at {meta.image_size} px{outputs}. Decision support "
        "for limb radiographs, **never a diagnosis**.",
        "",
        *_misses_first(figures),
        "## Intended use",
        "- Second reader for adult limb radiographs (hand, wrist, forearm, elbow, shoulder, hip, "
        "knee, leg, ankle, foot): flags images a clinician should look at again, with where.",
        f"- {_rule_sentence(meta)} `out_of_scope` when the input does not look like the "
        "training radiographs. A clinician reads the image and decides.",
        "- Not for: a diagnosis without a reader, triage that removes images from a worklist, "
        "children, the spine, skull or pelvis, CT/MR, or any site whose radiographs were not "
        "checked against this model (run `bonefrac evaluate default --into DIR --manifest CSV` "
        "on local, labelled images first).",
        "",
        *_data_lines(meta, cfg, figures),
    ]
    lines += [
        *_recipe_lines(meta, cfg, inputs),
        "## Ranking and boxes (test split; sensitivity and specificity at the rule-in cut)",
        "",
        "| test source | images (fractured, boxed) | ROC-AUC | sensitivity | specificity "
        "| hit rate | ap50_boxed |",
        "|---|---|---|---|---|---|---|",
    ]
    for source, row in figures.items():
        sup = row["support"]
        lines.append(
            f"| {SOURCE_NAMES.get(source, source)} | {sup['n']} ({sup['n_pos']}, "
            f"{row.get('n_boxed', 'n/a')}) | {format_ci(row['roc_auc'])} | {format_ci(row['sensitivity'])} "
            f"| {format_ci(row['specificity'])} | {format_ci(row.get('hit_rate'))} "
            f"| {format_ci(row.get('ap50_boxed'))} |"
        )
    lines += [
        "",
        "Hit rate: the map's peak falls in a radiologist's box, on the fractured images with "
        "boxes. ap50_boxed: box AP at IoU 0.5 on those images.",
    ]
    if inputs.seeds:
        lines += ["", "### Every seed trained with this recipe (the shipped one chosen on val)",
                  "", "| seed | val ROC-AUC | test ROC-AUC by source |", "|---|---|---|"]  # fmt: skip
        for s in inputs.seeds:
            per = ", ".join(f"{SOURCE_NAMES.get(k, k)} {_num(v.get('roc_auc'))}"
                            for k, v in s.test.items())  # fmt: skip
            lines.append(f"| {s.seed} | {_num(s.val_roc_auc)} | {per} |")
    else:
        lines += ["", "One seed was trained: another training of the same recipe moves test "
                  "ROC-AUC by about ±0.02, so read these figures as one training's."]  # fmt: skip
    lines += [
        "",
        "## Known limits",
        *("- " + line.format(lower_source=_lower_source(figures))
          for line in CARD_TEXT["known_limits"]),
        "",
        "## Licences",
        *(f"- Data: {CARD_TEXT['data_licences'].get(s, s)}." for s in _sources(cfg, figures)),
        "- " + CARD_TEXT["weights_licence"].format(backbone=backbone),
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def _data_lines(meta: Any, cfg: Any, figures: dict[str, Any]) -> list[str]:
    """The card's training data: sources, manifest, split sizes, per-source counts."""
    sizes = meta.get("split_sizes") or {}
    lines = [
        "## Training data",
        f"- Sources: {', '.join(SOURCE_NAMES.get(s, s) for s in _sources(cfg, figures))}.",
        f"- Manifest SHA-1 `{meta.get('manifest_sha1')}`; split seed "
        f"{_split_seed(meta.get('manifest'))} (grouped, stratified; near-duplicates share a "
        "group and a split).",
        f"- Images: train {sizes.get('train', '?')}, val {sizes.get('val', '?')}, "
        f"test {sizes.get('test', '?')}.",
    ]
    counts = _manifest_counts(meta.get("manifest"))
    if counts is not None:
        lines.append("")
        lines.append("| source | split | images | fractured |")
        lines.append("|---|---|---|---|")
        for (source, split), row in counts.iterrows():
            lines.append(f"| {SOURCE_NAMES.get(source, source)} | {split} | {int(row['size'])} "
                         f"| {int(row['sum'])} |")  # fmt: skip
    return lines


def _recipe_lines(meta: Any, cfg: Any, inputs: CardInputs) -> list[str]:
    """The card's recipe: config, training, selection, deploy fits, stored weights."""
    parity = (meta.get("shipped") or {}).get("parity") or {}
    return [
        "",
        "## Recipe",
        f"- Config `{cfg.name}` (configs/{cfg.name}.yaml): {cfg.train.epochs} epochs, "
        f"batch {cfg.data.batch_size}, lr {cfg.train.lr}, augment {cfg.data.augment}, "
        f"sampler {cfg.data.sampler}, ImageNet-initialised ({cfg.model.pretrained}); seed "
        f"{meta.get('seed')}.",
        f"- Trained on {inputs.hardware} in {_duration(meta.get('train_seconds'))}, bonefrac "
        f"commit `{inputs.commit}`, torch {(meta.get('versions') or {}).get('torch', '?')}.",
        f"- Chosen on val (ROC-AUC {_num(meta.get('best_score'))} at epoch "
        f"{meta.get('best_epoch')}), never on test.",
        f"- Deploy fits on val: temperature {meta.temperature:.3f}, {_cuts_text(meta)}, "
        f"out-of-scope rules: {_scope_text(meta)}.",
        f"- Weights stored as {meta.get('weights_dtype', 'float32')} (computed in float32): "
        f"against the fp32 weights on the {parity.get('n_images', '?')} test images the largest "
        f"|delta probability| is {_num(parity.get('max_abs_delta_prob'), 4)}, the largest "
        f"|delta logit| {_num(parity.get('max_abs_delta_logit'), 4)} (mean "
        f"{_num(parity.get('mean_abs_delta_logit'), 4)}), and "
        f"{(parity.get('at_shipped_settings') or parity).get('flipped_calls', '?')} fracture "
        "calls flip at the stored threshold.",
        f"- Rebuild: `{inputs.command}`.",
        "",
    ]


def _rule_sentence(meta: Any) -> str:
    """How the shipped model's decisions are made, in a clinician's words."""
    if meta.rule_out is not None:
        fit = meta.get("rule_out_fit") or {}
        return (
            "Every image gets `fracture` (a firm finding) at or above the rule-in cut "
            f"({meta.threshold:.4f}, {meta.get('threshold_criterion')} on val), `no_fracture` "
            f"only below the rule-out cut ({meta.rule_out:.4f}, fitted so that "
            f"{_pct(fit.get('target'))} of val fractures are flagged), `refer` (doubt: look "
            "here) between the two, or"
        )
    coverage = (meta.refer.model_extra or {}).get("val_coverage") if meta.refer else None
    return (
        "Every image gets `fracture` / `no_fracture` at the stored threshold, `refer` when the "
        f"model is uncertain (the refer rule answers about {_pct(coverage)} of val images), or"
    )


def _cuts_text(meta: Any) -> str:
    if meta.rule_out is not None:
        return (
            f"rule-in cut {meta.threshold:.4f} ({meta.get('threshold_criterion')}), rule-out cut "
            f"{meta.rule_out:.4f} (sensitivity:{(meta.get('rule_out_fit') or {}).get('target')})"
        )
    return f"threshold {meta.threshold:.4f} ({meta.get('threshold_criterion')}), refer rule"


def _scope_text(meta: Any) -> str:
    """Which fitted out-of-scope rules the model carries (beside modality, colour, blank)."""
    parts = []
    if meta.appearance is not None:
        parts.append("the appearance rule (does it look like a radiograph at all)")
    if meta.ood is not None:
        parts.append(f"the {meta.ood.method} feature detector")
    return ", ".join(parts) or "none fitted"


def _misses_first(figures: dict[str, Any]) -> list[str]:
    """The card's first table: what its decisions do to fractured and normal test images."""
    head = ["test source", "images (fractured)", "miss rate", "normals cleared", "referred",
            "PPV of fracture calls"]  # fmt: skip
    rows = [
        [SOURCE_NAMES.get(source, source), f"{row['support']['n']} ({row['support']['n_pos']})",
         *(format_ci(row[k]) for k in ("miss_rate", "normals_cleared", "referred",
                                       "fracture_ppv"))]
        for source, row in figures.items()
    ]  # fmt: skip
    lines = [
        "## Misses first (test split, the stored decision rule; 95% bootstrap CIs)",
        "",
        *markdown_table(head, rows).splitlines(),
    ]
    lines += [
        "",
        "Miss rate: fractured images called `no_fracture`. Normals cleared: images without a "
        "fracture called `no_fracture` (the reading it saves). Referred: `refer` calls.",
        "",
    ]
    return lines


def write_model_card(run: RunDir, name: str, inputs: CardInputs) -> Path:
    """Write RUN/MODEL_CARD.md atomically."""
    with atomic_open(run.card_path, "w", encoding="utf-8") as fh:
        fh.write(card_text(run, name, inputs))
    return run.card_path


def _sources(cfg: Any, figures: dict[str, Any]) -> list[str]:
    found = [s for s in figures if s != "all"]
    return list(cfg.data.sources or found)


def _lower_source(figures: dict[str, Any]) -> str:
    """ ": on the <source> test images ROC-AUC is lower than on <source>" for the sources whose
    test ROC-AUC differs, from the lowest to the highest; "" with fewer than two sources."""
    aucs = {s: (row["roc_auc"] or {}).get("value") for s, row in figures.items() if s != "all"}
    ranked = sorted((v, s) for s, v in aucs.items() if v is not None)
    if len(ranked) < 2 or ranked[0][0] == ranked[-1][0]:
        return ""
    low, high = (SOURCE_NAMES.get(s, s).split(" ")[0] for _, s in (ranked[0], ranked[-1]))
    return f": on the {low} test images ROC-AUC is lower than on {high}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.0%}"


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "an unrecorded time"
    return f"{float(seconds) / 60:.0f} min"


__all__ = ["MODEL_CARD", "CardInputs", "SeedResult", "card_text", "source_figures",
           "write_model_card"]  # fmt: skip
