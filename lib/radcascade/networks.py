"""The 3D UNets of stages 1 and 2 and how a checkpoint describes them.

A :class:`UNetSpec` is stored inside every checkpoint, so a model file is self-describing: the
infer task rebuilds exactly the network that was trained. Two architectures:

* ``"unet"``: MONAI's residual UNet (the committed networks). With ``strides[0] == 2`` its first
  layer already works at half resolution, which keeps it fast on a CPU (the organ stage); with
  ``strides[0] == 1`` its first level keeps full resolution (the lesion stage, :data:`FULLRES_LESION_UNET`).
* ``"resenc"``: nnU-Net's design (MONAI's ``DynUNet``): a residual encoder whose first level keeps
  full resolution (``strides[0] == 1``, one entry per level), and deep supervision. In training
  mode it also returns ``deep_supervision`` coarser heads, upsampled to full size and stacked on
  dim 1; in eval mode it returns the main output only, like ``"unet"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import DynUNet, UNet

ARCHITECTURES = ("unet", "resenc")


@dataclass(frozen=True)
class UNetSpec:
    """Hyper-parameters of a MONAI 3D UNet."""

    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    dropout: float = 0.1
    norm: str = "instance"
    architecture: str = "unet"  # one of ARCHITECTURES
    deep_supervision: int = 0  # "resenc": coarser heads trained besides the main output

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{self.architecture}' (one of {ARCHITECTURES})")
        levels = len(self.channels) if self.architecture == "resenc" else len(self.channels) - 1
        if len(self.strides) != levels:
            raise ValueError(f"a '{self.architecture}' network with {len(self.channels)} levels needs {levels} strides")
        if self.architecture == "unet" and self.deep_supervision:
            raise ValueError("deep supervision needs the 'resenc' architecture")
        if not 0 <= self.deep_supervision <= len(self.channels) - 2:
            raise ValueError(f"deep_supervision must be 0..{len(self.channels) - 2} for {len(self.channels)} levels")

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (product of the strides)."""
        d = 1
        for s in self.strides:
            d *= s
        return d

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetSpec":
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        d["strides"] = tuple(d["strides"])
        return cls(**d)

    def build(self) -> torch.nn.Module:
        if self.architecture == "resenc":
            return DynUNet(
                spatial_dims=3,
                in_channels=1,
                out_channels=self.out_channels,
                kernel_size=[3] * len(self.channels),
                strides=list(self.strides),
                upsample_kernel_size=list(self.strides[1:]),
                filters=list(self.channels),
                dropout=self.dropout or None,
                norm_name=self.norm,
                deep_supervision=self.deep_supervision > 0,
                deep_supr_num=max(1, self.deep_supervision),
                res_block=True,
            )
        return UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=self.out_channels,
            channels=self.channels,
            strides=self.strides,
            num_res_units=self.num_res_units,
            dropout=self.dropout,
            norm=self.norm,
        )


# Sized for a CPU workstation; both stages are binary (background vs structure).
ORGAN_UNET = UNetSpec(channels=(16, 32, 64, 128), strides=(2, 2, 2))
# The earlier committed lesion network (``--lesion-network unet``): its first layer halves the resolution.
LESION_UNET = UNetSpec(channels=(16, 32, 64, 128), strides=(2, 2, 2))
# nnU-Net's recipe for the lesion stage (``--lesion-network resenc``): full-resolution first level (8
# channels), residual encoder, 5 levels, 2 deep-supervision heads. About 3x the training step and 2x
# the inference time of LESION_UNET on a CPU: small lesions are only ~5 voxels across on the lesion
# grid, and LESION_UNET's first layer already halves the resolution.
RESENC_LESION_UNET = UNetSpec(channels=(8, 16, 32, 64, 128), strides=(1, 2, 2, 2, 2), dropout=0.1,
                              architecture="resenc", deep_supervision=2)
# The lesion stage's network (``--lesion-network unet-fullres``, committed): LESION_UNET changed towards
# small lesions: a first level at full resolution (stride 1, 8 channels) and one more level (128
# channels) to keep its receptive field. About 3x the training step and 2.3x the inference time of
# LESION_UNET on a CPU; chosen on validation (docs/benchmarks.md, lesion quality, seventh round).
FULLRES_LESION_UNET = UNetSpec(channels=(8, 16, 32, 64, 128), strides=(1, 2, 2, 2))
TINY_UNET = UNetSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=0, dropout=0.0)
