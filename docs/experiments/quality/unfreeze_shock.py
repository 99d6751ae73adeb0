"""What the first backbone steps after unfreezing do to a head-trained Lite0 (128 px, CPU).

Fits the head on 192 balanced FracAtlas train images (backbone frozen, BatchNorm on running
statistics), then takes 12 steps with the backbone unfrozen under each setting and prints the
relative weight change, the shift of the val logits (in units of their spread), val ROC-AUC on
128 balanced val images, and the 12 training losses. Settings: BatchNorm on batch statistics
(Lightning's train mode) or frozen (``train.freeze_bn``), backbone LR at the schedule's value at
the unfreeze step (old) or re-warmed from ~0 (``train.unfreeze_warmup_epochs: 0.5``).

    .venv/bin/python docs/experiments/quality/unfreeze_shock.py --manifest /tmp/fa_data/manifest.csv
"""

import argparse
import copy

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from bonefrac.data.transforms import to_input
from bonefrac.models.registry import build_model, resolve_spec
from bonefrac.training.module import rewarm_after, warmup_cosine

torch.manual_seed(0)
torch.set_num_threads(2)
S = 128
ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--manifest", required=True)
df = pd.read_csv(ap.parse_args().manifest)


def load(frame):
    arr = [np.asarray(Image.open(p).convert("L").resize((S, S))) for p in frame.path]
    return torch.from_numpy(np.stack(arr))[:, None], torch.tensor(
        frame.label.values, dtype=torch.float32
    )


rng = np.random.default_rng(0)
tr = df[df.split == "train"]
tr = pd.concat(
    [tr[tr.label == 1].sample(96, random_state=0), tr[tr.label == 0].sample(96, random_state=0)]
).sample(frac=1, random_state=0)
va = df[df.split == "val"]
va = pd.concat(
    [va[va.label == 1].sample(64, random_state=0), va[va.label == 0].sample(64, random_state=0)]
)
xt, yt = load(tr)
xv, yv = load(va)
spec = resolve_spec("efficientnet_lite0")


def inp(x):
    return to_input(x, spec.mean, spec.std, False)


model = build_model("efficientnet_lite0", pretrained="imagenet", freeze="backbone", dropout=0.2)
bce = torch.nn.BCEWithLogitsLoss()
opt = torch.optim.AdamW(model.head_parameters(), lr=1e-3)
model.train()
for _ep in range(3):  # head-only warm-up: 3 passes of 12 batches
    for i in range(0, len(xt), 16):
        loss = bce(model(inp(xt[i : i + 16])).squeeze(1), yt[i : i + 16])
        opt.zero_grad()
        loss.backward()
        opt.step()


def evaluate(m):
    m.eval()
    with torch.no_grad():
        lg = m(inp(xv)).squeeze(1)
    m.train()
    return lg


base_logits = evaluate(model)
print(
    f"after head warm-up: val AUC {roc_auc_score(yv, base_logits):.3f}, logit sd {base_logits.std():.3f}"
)
head_state = copy.deepcopy(model.state_dict())
steps_per_epoch = 175  # FracAtlas train 2801 / batch 16


def run(name, bb_lr_fn, k=12, bn_eval=False):
    m = copy.deepcopy(model)
    m.load_state_dict(head_state)
    m.set_freeze("none")
    m.train()
    if bn_eval:
        [
            mod.eval()
            for mod in m.modules()
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
        ]
    bb = [p for n, p in m.named_parameters() if not n.startswith("head")]
    w0 = torch.cat([p.detach().flatten() for p in bb]).clone()
    o = torch.optim.AdamW(
        [
            {"params": bb, "lr": 1.0},
            {"params": m.head_parameters(), "lr": 0.0 if name.startswith("frozen-BN") else 1e-3},
        ],
        weight_decay=1e-4,
    )
    losses = []
    for s in range(k):
        o.param_groups[0]["lr"] = bb_lr_fn(s)
        j = (s * 16) % len(xt)
        loss = bce(m(inp(xt[j : j + 16])).squeeze(1), yt[j : j + 16])
        o.zero_grad()
        loss.backward()
        o.step()
        losses.append(loss.item())
    w1 = torch.cat([p.detach().flatten() for p in bb])
    lg = evaluate(m)
    dl = (lg - base_logits).abs().mean() / base_logits.std()
    print(
        f"{name:38s} rel.|dW| {((w1 - w0).norm() / w0.norm()).item():.2e}  eval |dlogit|/sd {dl:.2f}  val AUC {roc_auc_score(yv, lg):.3f}  train losses {np.round(losses, 3).tolist()}"
    )


peak = 1e-3 * 0.3 * warmup_cosine(6 * steps_per_epoch, int(0.3 * steps_per_epoch))(steps_per_epoch)
ramp = rewarm_after(steps_per_epoch, int(0.5 * steps_per_epoch), lambda s: 1.0)
run("BN batch stats only (backbone lr 0)", lambda s: 0.0)
run("old: backbone at near-peak lr", lambda s: peak)
run("new: backbone lr re-warmed", lambda s: peak * ramp(steps_per_epoch + s))
run("stress x3 lr, old", lambda s: 3 * peak)
run("stress x3 lr, new", lambda s: 3 * peak * ramp(steps_per_epoch + s))
run("frozen-BN reference (all lr 0)", lambda s: 0.0, bn_eval=True)
run("freeze_bn, old lr", lambda s: peak, bn_eval=True)
run("freeze_bn, new lr", lambda s: peak * ramp(steps_per_epoch + s), bn_eval=True)
