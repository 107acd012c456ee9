"""The 3D UNets of stages 1 and 2 and how a checkpoint describes them.

A :class:`UNetSpec` is stored inside every checkpoint, so a model file is self-describing: the
infer task rebuilds exactly the network that was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import UNet


@dataclass(frozen=True)
class UNetSpec:
    """Hyper-parameters of a MONAI 3D UNet."""

    out_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    dropout: float = 0.1
    norm: str = "instance"

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


# Defaults sized for a CPU workstation; both stages are binary (background vs structure).
ORGAN_UNET = UNetSpec(channels=(16, 32, 64, 128), strides=(2, 2, 2))
LESION_UNET = UNetSpec(channels=(16, 32, 64, 128), strides=(2, 2, 2))
TINY_UNET = UNetSpec(channels=(4, 8, 16), strides=(2, 2), num_res_units=0, dropout=0.0)
