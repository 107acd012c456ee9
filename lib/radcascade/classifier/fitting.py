"""The training regimes of one fixed mode: layer-wise fine-tuning (and scratch), frozen deep
features and radiomics into a classical classifier; their evaluation on lesion samples."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radcascade.backbones import Backbone
from radcascade.classifier.config import ClassifierConfig
from radcascade.classifier.nets import LesionClassifierNet, RadiomicsNet
from radcascade.classifier.samples import LesionSample, radiomics_matrix, stack_patches
from radcascade.distributed import Distributed
from radcascade.evaluation import classification_metrics
from radcascade.model_selection import CandidateScore

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
    """Train the head and the top ``depth`` blocks; keep the epoch with the best validation AUC.

    In a ``torch.distributed`` run (:mod:`radcascade.distributed`) every rank holds all lesions and
    draws the same shuffled, augmented global batch of ``batch_size x world_size`` views; each rank
    trains on its slice under DistributedDataParallel, with the class-weighted loss normalised by
    the global batch's weight, so the step is that of one process on the global batch (the last,
    incomplete global batch is dropped).  Batch-norm layers that train (``depth`` > 0) see their
    rank's slice: synchronised on CUDA (SyncBatchNorm), per rank on the CPU.  Every rank validates
    on all validation lesions, so all take the same best-epoch decision.
    """
    t0 = time.time()
    dist = Distributed.current()
    world, rank = dist.world_size, dist.rank
    sched = schedule or schedule_for(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = net.to(device)
    net.set_trainable_depth(depth)
    opt = torch.optim.AdamW(net.param_groups(depth, sched.learning_rate, sched.layer_lr_decay), weight_decay=cfg.weight_decay)
    model = _data_parallel(net, device) if dist.active else net
    x, y = stack_patches(train)
    views = x.shape[1]
    x = x.reshape(-1, *x.shape[2:])  # every view is a training image
    y = y.repeat_interleave(views)
    weights = _class_weights(y.tolist(), n_classes).to(device)
    per_rank = cfg.batch_size
    per_global = per_rank * world
    best_score, best_state, best_epoch, stale = -1.0, None, 0, 0
    epochs, loss = 0, torch.tensor(0.0)
    for epoch in range(1, sched.epochs + 1):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        n_batches = len(order) // per_global if world > 1 else math.ceil(len(order) / per_global)
        for b in range(n_batches):
            idx = order[b * per_global:(b + 1) * per_global]
            if len(idx) < 2:
                continue
            xb = _augment(x[idx], gen)  # the whole global batch: the same draws as one process
            yb = y[idx].to(device)
            mine = slice(rank * per_rank, (rank + 1) * per_rank) if world > 1 else slice(None)
            per_view = F.cross_entropy(model(xb[mine].to(device)), yb[mine], reduction="none")
            # weighted mean over the global batch; x world: DDP averages the ranks' gradients
            loss = (weights[yb[mine]] * per_view).sum() / weights[yb].sum() * world
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
        if progress and dist.main:
            progress(f"[classifier depth {depth}] epoch {epoch}: loss {float(loss) / world:.3f} val AUC {auc}")
        if val and stale >= sched.patience:
            break
    if best_state is not None and val:
        net.load_state_dict(best_state)
    auc, acc = evaluate_samples(net, val, n_classes, device)
    report = FitReport("finetune", depth, auc, acc, best_epoch or epochs, time.time() - t0, len(train), len(val))
    return net, report


def _data_parallel(net: LesionClassifierNet, device: torch.device) -> nn.Module:
    """``net`` under DistributedDataParallel (its batch norms synchronised across GPUs)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        net.features = nn.SyncBatchNorm.convert_sync_batchnorm(net.features)
        return DistributedDataParallel(net, device_ids=[device])
    return DistributedDataParallel(net)


def deep_features(net: LesionClassifierNet, samples, device, batch: int = 128) -> np.ndarray:
    net.eval()
    x, _ = stack_patches(samples)
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
    feats = deep_features(net, train, device)
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
    x, _ = stack_patches(samples)
    if isinstance(net, RadiomicsNet):
        patches = x.to(device) if net.uses_patches else None
        return net.predict_proba(radiomics_matrix(samples).to(device), patches).cpu().numpy()
    return net.predict_proba(x.to(device)).cpu().numpy()


def fit_radiomics(train: Sequence[LesionSample], val: Sequence[LesionSample], n_classes: int, cfg: ClassifierConfig,
                  device: torch.device, backbone: Backbone | None = None) -> tuple[RadiomicsNet, FitReport]:
    """Radiomics features (plus the frozen CNN's, with ``backbone``) -> a classical classifier."""
    t0 = time.time()
    r = radiomics_matrix(train)
    net = RadiomicsNet(r.shape[1], n_classes, backbone).to(device)
    x, _ = stack_patches(train)
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
