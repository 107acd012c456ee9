"""The classifier networks: the CNN (backbone + linear head) and the radiomics linear model."""

from __future__ import annotations

import torch
from torch import nn

from radcascade.backbones import Backbone

class LesionClassifierNet(nn.Module):
    """Backbone features -> dropout -> linear head; ``blocks`` kept for layer-wise training."""

    def __init__(self, backbone: Backbone, n_classes: int, dropout: float = 0.2):
        super().__init__()
        self.features = backbone.features
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.feature_dim, n_classes))
        self._blocks = list(backbone.blocks)  # plain list: already registered inside ``features``
        self._frozen: list[nn.Module] = []
        # EfficientNet-Lite ships BN momentum 0.01 (TF's 0.99): with the few hundred steps of a small
        # medical data set the running statistics would barely move from their start and eval-mode
        # outputs would be meaningless (seen: AUC 0.5 from scratch). PyTorch's default 0.1 instead.
        for m in self.features.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.1

    @property
    def n_blocks(self) -> int:
        return len(self._blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def set_trainable_depth(self, depth: int) -> None:
        """Train the head and the top ``depth`` blocks; freeze the rest (BN statistics too)."""
        depth = max(0, min(depth, self.n_blocks))
        for p in self.features.parameters():
            p.requires_grad_(False)
        trained = self._blocks[self.n_blocks - depth:] if depth else []
        for block in trained:
            for p in block.parameters():
                p.requires_grad_(True)
        self._frozen = self._blocks[: self.n_blocks - depth]
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for block in self._frozen:  # frozen blocks keep their ImageNet BN statistics
            block.eval()
        return self

    def param_groups(self, depth: int, lr: float, decay: float) -> list[dict]:
        groups = [{"params": list(self.head.parameters()), "lr": lr}]
        for i, block in enumerate(reversed(self._blocks[self.n_blocks - depth:] if depth else [])):
            groups.append({"params": list(block.parameters()), "lr": lr * decay ** (i + 1)})
        return groups

    @torch.no_grad()
    def predict_proba(self, patches: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """Class probabilities ``[L, K]`` averaged over each lesion's views; input ``[L, V, 3, S, S]``."""
        if len(patches) == 0:
            return torch.zeros((0, self.head[-1].out_features))
        return self.view_probabilities(patches, batch).mean(1)

    @torch.no_grad()
    def view_probabilities(self, patches: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """Class probabilities ``[L, V, K]`` of every view of non-empty ``[L, V, 3, S, S]`` patches, in
        forward passes of ``batch`` patches (a poor lesion model can report thousands of specks)."""
        self.eval()
        L, V = patches.shape[:2]
        flat = patches.reshape(L * V, *patches.shape[2:])
        probs = torch.cat([torch.softmax(self(flat[i:i + batch]).float(), 1) for i in range(0, len(flat), batch)])
        return probs.view(L, V, -1)


class RadiomicsInputsMissing(ValueError):
    """A radiomics classifier was asked to classify patches without the lesions' masks."""


class RadiomicsNet(nn.Module):
    """Radiomics features (and, for ``radiomics+features``, the frozen CNN's pooled features of the
    lesion's patches, averaged over views) -> standardisation -> one linear layer.

    Unlike the folded deep-features head, the standardisation is kept as buffers, so a feature that
    could not be computed for a lesion (NaN) becomes the training mean (0 after scaling)."""

    def __init__(self, n_radiomics: int, n_classes: int, backbone: Backbone | None = None):
        super().__init__()
        self.n_radiomics = n_radiomics
        self.features = backbone.features if backbone is not None else None
        width = n_radiomics + (backbone.feature_dim if backbone is not None else 0)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.head = nn.Linear(width, n_classes)

    @property
    def uses_patches(self) -> bool:
        return self.features is not None

    def inputs(self, radiomics: torch.Tensor, patches: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised inputs ``[L, width]`` of the linear layer (NaN -> 0, the training mean)."""
        x = self.raw_inputs(radiomics, patches)
        return torch.nan_to_num((x - self.mean) / self.scale, nan=0.0, posinf=0.0, neginf=0.0)

    def raw_inputs(self, radiomics: torch.Tensor, patches: torch.Tensor | None = None, batch: int = 128) -> torch.Tensor:
        """Radiomics features and (if used) the view-averaged CNN features, unscaled ``[L, width]``."""
        x = radiomics.float()
        if self.features is not None:
            if patches is None:
                raise RadiomicsInputsMissing("radiomics+features needs the lesions' patches as well")
            self.features.eval()
            L, V = patches.shape[:2]
            flat = patches.reshape(L * V, *patches.shape[2:])
            with torch.no_grad():
                deep = torch.cat([self.features(flat[i:i + batch]).float() for i in range(0, len(flat), batch)]) \
                    if len(flat) else torch.zeros(0, self.head.in_features - self.n_radiomics)
            x = torch.cat([x, deep.view(L, V, -1).mean(1).to(x.device)], 1)
        return x

    def forward(self, radiomics: torch.Tensor, patches: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.inputs(radiomics, patches))

    @torch.no_grad()
    def predict_proba(self, radiomics: torch.Tensor, patches: torch.Tensor | None = None) -> torch.Tensor:
        self.eval()
        if len(radiomics) == 0:
            return torch.zeros((0, self.head.out_features))
        return torch.softmax(self(radiomics, patches).float(), 1)
