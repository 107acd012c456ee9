"""Classifier training options: the modes, the classical classifiers, :class:`ClassifierConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from radcascade.radiomics import RadiomicsConfig

RADIOMICS_MODES = ("radiomics", "radiomics+features")
MODES = ("scratch", "features", "finetune", *RADIOMICS_MODES, "auto")
CLASSICAL = ("logreg", "svm", "lda")
AUTO_FAMILIES = ("radiomics", "features", "radiomics+features", "finetune")


@dataclass
class ClassifierConfig:
    """How to train the classifier."""

    mode: str = "auto"
    backbone: str = "efficientnet-lite0"
    weights: str | None = "imagenet"  # "imagenet", a local file, or None
    depth: int | None = None  # finetune: blocks trained from the top; None = all
    auto_depths: tuple[int, ...] | None = None  # auto: fine-tuning depths (default: 0, 1, 2, 3, 5, all)
    auto_families: tuple[str, ...] = AUTO_FAMILIES  # auto: families among the candidates
    cv_folds: int = 3  # auto: study-level folds ...
    cv_repeats: int = 2  # ... repeated with other shuffles
    classical: str = "logreg"
    epochs: int = 30
    batch_size: int = 32
    dropout: float = 0.2  # before the linear head, while training
    learning_rate: float = 1e-3
    layer_lr_decay: float = 0.5  # each block lower than the one above gets this factor
    weight_decay: float = 1e-4
    patience: int = 8
    # scratch has no pretrained blocks to protect: one learning rate for every block, and a longer
    # budget (random weights need more epochs to converge); None = 3x epochs, 2x patience
    scratch_learning_rate: float = 1e-3
    scratch_epochs: int | None = None
    scratch_patience: int | None = None
    val_fraction: float = 0.25
    seed: int = 0
    allow_download: bool = False
    radiomics: RadiomicsConfig = RadiomicsConfig()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown classifier mode '{self.mode}' (one of {MODES})")
        if self.classical not in CLASSICAL:
            raise ValueError(f"unknown classical classifier '{self.classical}' (one of {CLASSICAL})")
        unknown = set(self.auto_families) - set(AUTO_FAMILIES)
        if unknown or not self.auto_families:
            raise ValueError(f"auto_families must be some of {AUTO_FAMILIES}, got {self.auto_families}")
        if self.cv_folds < 2 or self.cv_repeats < 1:
            raise ValueError("auto needs cv_folds >= 2 and cv_repeats >= 1")

    @property
    def needs_radiomics(self) -> bool:
        """Whether training samples must carry radiomics features."""
        if self.mode == "auto":
            return any(f.startswith("radiomics") for f in self.auto_families)
        return self.mode in RADIOMICS_MODES
