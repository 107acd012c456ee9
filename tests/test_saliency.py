import numpy as np
import pytest
import torch

from radcascade.classifier import ClassifierConfig, LesionSample, RadiomicsNet, split_by_study, train_classifier
from radcascade.patches import IMAGENET_MEAN, IMAGENET_STD, LesionGeometry, PatchConfig
from radcascade.saliency import SaliencyUnavailable, grad_cam, occlusion_map, saliency_volume

S, RADIUS, RIM = 64, 18.0, 5.0


def _rim_samples(n_studies=10, per_study=4, seed=0):
    """64 px patches of a dark lesion in a textured organ; the class is decided by the rim alone:
    malignant (1) has a bright enhancing rim, benign (0) none. Interior and background match."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(float(S)), torch.arange(float(S)), indexing="ij")
    out = []
    for s in range(n_studies):
        for k in range(per_study):
            label = (s + k) % 2
            cy, cx = (S - 1) / 2 + torch.randint(-3, 4, (2,), generator=g).float()
            r = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
            img = 0.6 + 0.06 * torch.randn(S, S, generator=g)
            img[r < RADIUS] = 0.3 + 0.06 * torch.randn(int((r < RADIUS).sum()), generator=g)
            if label == 1:
                img[(r >= RADIUS - RIM) & (r < RADIUS)] = 0.95
            rgb = (img.expand(3, S, S) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
            out.append((LesionSample(f"study{s}", label, rgb.unsqueeze(0)), (float(cy), float(cx))))
    return out


def _peak_distance(m, centre):
    r, c = np.unravel_index(int(m.argmax()), m.shape)
    return float(np.hypot(r - centre[0], c - centre[1]))


@pytest.fixture(scope="module")
def trained():
    samples = [s for s, _ in _rim_samples()]
    train, val = split_by_study(samples, 0.25, seed=0)
    return train_classifier(train, val, 2, ClassifierConfig(mode="features"))


def test_gradcam_and_occlusion_point_inside_a_lesion_decided_by_its_rim(trained):
    assert trained.report.val_auc > 0.9  # the rim decides, and the classifier has learnt it
    test = [(s, c) for s, c in _rim_samples(n_studies=2, per_study=2, seed=1) if s.label == 1]
    patches = torch.stack([s.patches[0] for s, _ in test])
    classes = [1] * len(test)
    cams = grad_cam(trained.net, patches, classes).numpy()
    occ = occlusion_map(trained.net, patches, classes).numpy()
    assert cams.shape == occ.shape == (len(test), S, S)
    for cam, o, (_, centre) in zip(cams, occ, test):
        assert 0 <= cam.min() and cam.max() == pytest.approx(1.0) and o.max() == pytest.approx(1.0)
        assert _peak_distance(cam, centre) <= RADIUS, "Grad-CAM peak outside the lesion"
        assert _peak_distance(o, centre) <= RADIUS, "occlusion peak outside the lesion"
        yy, xx = np.indices(cam.shape)
        inside = np.hypot(yy - centre[0], xx - centre[1]) <= RADIUS
        assert cam[inside].mean() > cam[~inside].mean()


def test_saliency_volume_keeps_its_contract_and_leaves_the_network_clean(trained):
    net = trained.net
    hooks_before = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in net.modules())
    vol = torch.full((60, 60, 20), 60.0)
    x, y, z = torch.meshgrid(torch.arange(60.0), torch.arange(60.0), torch.arange(20.0), indexing="ij")
    vol[((x - 30) ** 2 + (y - 28) ** 2 + ((z - 10) * 3) ** 2).sqrt() <= 8] = 10.0
    geom = LesionGeometry((30.0, 28.0, 10.0), (16.0, 16.0, 16.0))
    for method in ("gradcam", "occlusion"):
        cam, peaks = saliency_volume(net, vol, (1.0, 1.0, 3.0), [geom], [1], PatchConfig(size=32, views=1),
                                     lambda v: tuple(float(c) for c in v), method=method)
        assert cam.dtype == np.uint8 and cam.shape == (60, 60, 20) and cam[..., 10].max() == 255
        assert cam[..., :9].max() == 0  # painted on the lesion's axial plane only
        assert len(peaks) == 1 and peaks[0].lesion_id == 1
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in net.modules()) == hooks_before
    with pytest.raises(SaliencyUnavailable, match="radiomics"):
        saliency_volume(RadiomicsNet(5, 2), vol, (1.0, 1.0, 3.0), [geom], [1], PatchConfig(size=S, views=1), tuple)


def test_gradcam_explains_either_class(trained):
    """Each class gets a map with some positive evidence: scored on the class's log-probability, not
    its logit, a class whose head weights are mostly negative does not come out all zero."""
    test = _rim_samples(n_studies=2, per_study=2, seed=2)
    patches = torch.stack([s.patches[0] for s, _ in test])
    for cls in (0, 1):
        cams = grad_cam(trained.net, patches, [cls] * len(test)).numpy()
        assert all(cam.max() == pytest.approx(1.0) for cam in cams), f"class {cls}: an all-zero map"
