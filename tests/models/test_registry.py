"""Model registry: one logit, CAM layer, freezing, weights loading (all offline)."""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bonefrac.errors import ModelError
from bonefrac.models import weights as W
from bonefrac.models.registry import REGISTRY, build_model, cam_target_layer

FAMILIES = [*sorted(REGISTRY), "timm:resnet18", "torchvision:mobilenet_v3_small"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_model_has_one_logit_and_a_cam_layer(name: str) -> None:
    model = build_model(name, pretrained="none").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1)
    layer = cam_target_layer(model)
    assert any(layer is m for m in model.modules())


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="efficientnet_lite0") as info:
        build_model("resnet5O")
    assert "simple_cnn" in str(info.value)
    with pytest.raises(ModelError, match="timm"):
        build_model("timm:not_a_model_at_all")


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_modes_and_frozen_batchnorm_stays_in_eval() -> None:
    model = build_model("timm:resnet18", freeze="backbone")
    assert _trainable(model) == {"head.weight", "head.bias"}
    model.train()
    frozen_bn = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and all(not m.training for m in frozen_bn)

    model.set_freeze("partial:1")
    names = _trainable(model)
    assert any(n.startswith("backbone.layer4.") for n in names)
    assert not any(n.startswith("backbone.layer3.") for n in names)
    model.train()
    assert model.backbone.layer4[0].bn1.training
    assert not model.backbone.layer3[0].bn1.training

    model.set_freeze("none")
    assert _trainable(model) == {n for n, _ in model.named_parameters()}


def test_lite0_imagenet_weights_map_every_key_and_see_natural_photos() -> None:
    from sklearn.datasets import load_sample_image
    from torchvision.models import ResNet50_Weights

    model = build_model("efficientnet_lite0", pretrained="imagenet").eval()
    src = W.read_state_dict(W.lite0_weights_file())
    src_tensors = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst = [
        v for k, v in model.backbone.state_dict().items() if not k.endswith("num_batches_tracked")
    ]
    assert len(dst) == len(src_tensors) - 2  # all but the 1000-class classifier
    assert all(torch.equal(a, b) for a, b in zip(dst, src_tensors, strict=False))

    # With the packaged classifier on top, the mapped backbone recognises a natural photo
    # (mean = std = 0.5, TF "same" padding): this fails if the mapping or normalisation is off.
    classifier = nn.Linear(model.backbone.num_features, 1000)
    classifier.weight.data, classifier.bias.data = src_tensors[-2], src_tensors[-1]
    image = load_sample_image("flower.jpg")[:, 100:527]  # a daisy, centre crop
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    x = nn.functional.interpolate(x[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top5 = classifier(model.backbone((x - 0.5) / 0.5)).topk(5).indices[0].tolist()
    categories = ResNet50_Weights.DEFAULT.meta["categories"]
    assert "daisy" in [categories[i] for i in top5]


def test_frozen_backbone_is_unchanged_by_a_training_step_while_the_head_learns() -> None:
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", pretrained="imagenet", freeze="backbone")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0.0, 1.0, 0.0, 1.0])
    loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
    loss.backward()
    opt.step()
    after = model.state_dict()
    backbone_keys = [k for k in before if k.startswith("backbone.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone_keys)  # BN stats too
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_offline_torchvision_download_fails_fast_with_weights_path_hint(monkeypatch) -> None:
    def offline(weights):  # noqa: ANN001, ANN202
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(W, "fetch_torchvision_state_dict", offline)
    start = time.perf_counter()
    with pytest.raises(ModelError, match="weights_path"):
        build_model("resnet50", pretrained="imagenet")
    assert time.perf_counter() - start < 10


def test_weights_path_loads_backbone_or_whole_model_and_checks_keys(tmp_path) -> None:
    from safetensors.torch import save_file

    ref = build_model("timm:resnet18", pretrained="none")
    # A torchvision-style classification checkpoint: backbone keys plus its own 'fc.' head.
    state = dict(ref.backbone.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)
    torch.save(state, tmp_path / "backbone.pth")
    model = build_model("timm:resnet18", weights_path=str(tmp_path / "backbone.pth"))
    assert torch.equal(model.backbone.conv1.weight, ref.backbone.conv1.weight)

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "m.safetensors")
    whole = build_model("timm:resnet18", weights_path=str(tmp_path / "m.safetensors"))
    assert torch.equal(whole.head.weight, ref.head.weight)

    torch.save({"not.a.key": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelError, match="wrong.pth"):
        build_model("timm:resnet18", weights_path=str(tmp_path / "wrong.pth"))
    (tmp_path / "evil.pth").write_bytes(b"\x80\x04not really a torch file")
    with pytest.raises(ModelError, match="evil.pth"):
        build_model("timm:resnet18", weights_path=str(tmp_path / "evil.pth"))


def test_lite0_weights_can_come_from_a_file_named_by_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = build_model("efficientnet_lite0", pretrained="imagenet").backbone.state_dict()
    copy = tmp_path / "lite0.pth"
    copy.write_bytes(W.lite0_weights_file().read_bytes())
    monkeypatch.setenv(W.LITE0_WEIGHTS_ENV, str(copy))
    assert W.lite0_weights_file() == copy
    from_env = build_model("efficientnet_lite0", pretrained="imagenet").backbone.state_dict()
    for key, value in packaged.items():
        assert torch.equal(value, from_env[key]), key
    monkeypatch.setenv(W.LITE0_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(ModelError, match="missing.pth"):
        build_model("efficientnet_lite0", pretrained="imagenet")
