"""CAM adapters: the target's sign, localisation on a trained model, the method x family matrix,
layer overrides, hooks released, channels_last and frozen backbones."""

from __future__ import annotations

import resource

import numpy as np
import pytest
import torch

from bonefrac.errors import ConfigError, ModelError
from bonefrac.maps.cam import (
    METHODS,
    check_method,
    compute_heatmaps,
    explainer,
    fracture_target,
    resolve_layer,
)
from bonefrac.maps.pointing_game import score_image
from bonefrac.models import REGISTRY, build_model
from tests.maps.conftest import SIZE, small_classifier


def _positives(mark_test):
    return np.where(mark_test.labels == 1)[0]


def test_trained_model_separates_marks(mark_model, mark_test):
    with torch.no_grad():
        prob = torch.sigmoid(mark_model(mark_test.inputs())[:, 0]).numpy()
    assert ((prob > 0.5) == mark_test.labels).mean() >= 0.9


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_peak_lands_on_the_mark(mark_model, mark_test, method):
    pos = _positives(mark_test)
    exp = compute_heatmaps(mark_model, mark_test.inputs(pos), method)
    scores = [score_image(h, mark_test.boxes[i]) for h, i in zip(exp.heat, pos, strict=True)]
    hit_rate = np.mean([s["hit"] for s in scores])
    energy = np.mean([s["energy_in_box"] for s in scores])
    chance = np.mean([s["box_area_share"] for s in scores])
    assert hit_rate >= 0.9
    assert energy > 5 * chance  # the mass concentrates on the mark, not only the peak


def test_binary_target_points_at_positive_evidence(mark_model, mark_test):
    """ClassifierOutputTarget(0) on the single logit = evidence FOR fracture.

    The pitfall: BinaryClassifierOutputTarget(c) negates the logit for every c != 1, e.g. when
    fed the predicted class of an image called negative. The negated map is empty or elsewhere.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import (
        BinaryClassifierOutputTarget,
        ClassifierOutputTarget,
    )

    pos = _positives(mark_test)
    x = mark_test.inputs(pos)
    target = fracture_target()
    assert isinstance(target, ClassifierOutputTarget) and target.category == 0
    logits = mark_model(x)
    assert torch.equal(target(logits[0]), logits[0, 0])  # +logit, per sample

    with GradCAM(model=mark_model, target_layers=[mark_model.cam_layer]) as cam:
        ours = cam(input_tensor=x, targets=[target] * len(x))
        as_one = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(1)] * len(x))
        negated = cam(input_tensor=x, targets=[BinaryClassifierOutputTarget(0)] * len(x))
    np.testing.assert_allclose(ours, as_one, atol=1e-5)

    def rates(maps):
        s = [score_image(h, mark_test.boxes[i]) for h, i in zip(maps, pos, strict=True)]
        return np.mean([r["hit"] for r in s]), np.mean([r["energy_in_box"] for r in s])

    hit_ours, energy_ours = rates(ours)
    hit_neg, energy_neg = rates(negated)
    assert hit_ours >= 0.9
    assert hit_neg <= 0.3
    assert energy_neg < energy_ours / 3


# Every registered model (a newly registered one is covered by registering it), plus one
# on-the-fly timm model for the family defaults.
FAMILIES = [*sorted(REGISTRY), "timm:resnet18"]


@pytest.fixture(scope="module")
def family_models():
    torch.manual_seed(0)
    return {name: build_model(name, pretrained="none").eval() for name in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "saliency"])
def test_method_runs_for_each_family(family_models, family, method):
    model = family_models[family]
    x = torch.randn(2, 3, SIZE, SIZE)
    exp = compute_heatmaps(model, x, method)
    assert exp.heat.shape == (2, SIZE, SIZE)
    assert exp.heat.dtype == np.float32
    assert np.isfinite(exp.heat).all()
    assert exp.heat.min() >= 0.0 and exp.heat.max() <= 1.0 + 1e-6
    assert exp.logits.shape == (2,)
    with torch.no_grad():
        np.testing.assert_allclose(exp.logits, model(x)[:, 0].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["eigencam", "smoothgrad"])
def test_other_methods_run(method):
    model = small_classifier().eval()
    kwargs = {"n_samples": 4} if method == "smoothgrad" else {}
    exp = compute_heatmaps(model, torch.randn(3, 3, SIZE, SIZE), method, **kwargs)
    assert exp.heat.shape == (3, SIZE, SIZE) and np.isfinite(exp.heat).all()


def test_method_names():
    assert check_method("GradCAM++") == "gradcam++"
    assert check_method("grad-cam") == "gradcam"
    assert set(METHODS) == {"model", "gradcam", "gradcam++", "eigencam", "saliency", "smoothgrad"}
    with pytest.raises(ConfigError, match="unknown explain method"):
        check_method("lime")


def test_layer_override(family_models):
    model = small_classifier()
    layer, name = resolve_layer(model)
    assert layer is model.cam_layer and name == "backbone.stages.1"
    assert resolve_layer(model, "backbone.stages.0")[0] is model.backbone.stages[0]
    assert resolve_layer(model, "stages.0")[1] == "backbone.stages.0"  # relative to backbone
    with pytest.raises(ModelError, match="no such module"):
        resolve_layer(model, "backbone.stages.9")
    # an earlier layer gives a finer map: it still runs and differs from the default
    x = torch.randn(1, 3, SIZE, SIZE)
    with explainer(model, "gradcam", layer="backbone.stages.0") as ex:
        assert ex.layer_name == "backbone.stages.0"
        assert ex(x).heat.shape == (1, SIZE, SIZE)
    resnet = family_models["timm:resnet18"]
    assert resolve_layer(resnet, "backbone.layer3")[0] is resnet.backbone.layer3


def test_hooks_released_and_memory_flat():
    """One library object for all batches; its hooks go on exit; no growth over 320 images."""
    model = small_classifier(widths=(4, 8)).eval()
    layer = model.cam_layer
    x = torch.randn(16, 3, 32, 32)
    with explainer(model, "gradcam") as ex:
        assert ex.hook_count == 2 and len(layer._forward_hooks) == 2
        for _ in range(4):  # warm-up
            ex(x)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(20):
            ex(x)
            assert len(ex._cam.activations_and_grads.activations) == 0  # cleared per batch
            assert ex._cam.outputs is None
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert ex.hook_count == 0 and len(layer._forward_hooks) == 0
    assert grown_kib < 50_000
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_channels_last_and_training_mode_restored():
    model = small_classifier()
    model.train()
    x = torch.randn(2, 3, SIZE, SIZE)
    ref = compute_heatmaps(model, x, "gradcam")
    assert model.training  # the explainer evaluates in eval mode and restores the mode
    model.eval()
    ref = compute_heatmaps(model, x, "gradcam")
    cl_model = small_classifier().to(memory_format=torch.channels_last).eval()
    got = compute_heatmaps(cl_model, x.contiguous(memory_format=torch.channels_last), "gradcam")
    np.testing.assert_allclose(got.heat, ref.heat, atol=1e-4)


def test_frozen_backbone_still_gets_gradients(mark_model, mark_test):
    pos = _positives(mark_test)[:4]
    x = mark_test.inputs(pos)
    ref = compute_heatmaps(mark_model, x, "gradcam").heat
    frozen = small_classifier()
    frozen.load_state_dict(mark_model.state_dict())
    frozen.set_freeze("backbone")
    frozen.eval()
    got = compute_heatmaps(frozen, x, "gradcam").heat
    assert got.max() > 0
    np.testing.assert_allclose(got, ref, atol=1e-5)
