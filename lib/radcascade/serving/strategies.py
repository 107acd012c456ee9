"""Active-learning strategies served to Slicer's "Next sample" (uncertainty strategies come later)."""

from __future__ import annotations

import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy


class RandomUnlabelled(Strategy):
    """A random unlabelled study, favouring studies not handed out recently.

    The stock ``Random`` weights studies by seconds since they were last served and fails
    ("Total of weights must be greater than zero") when every candidate was served within the
    same second; here every study keeps a weight of at least one.
    """

    def __init__(self, seed: int | None = None):
        super().__init__("Random unlabelled study (recently served ones less likely)")
        self._rng = random.Random(seed)

    def __call__(self, request, datastore: Datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request.get("strategy", "random")
        now = int(time.time())
        weights = []
        for image in images:
            served = datastore.get_image_info(image).get("strategy", {}).get(strategy, {})
            weights.append(max(1, now - int(served.get("ts", 0))))
        pick = self._rng.choices(range(len(images)), weights=weights)[0]
        return {"id": images[pick], "weight": weights[pick]}


SCORES = ("epistemic", "tta", "classifier")


class MostUncertain(Strategy):
    """The unlabelled study with the highest stored uncertainty (``score``: one of ``SCORES`` or
    ``combined``, a weighted mean), skipping studies handed to another client within ``lease_s``.

    ``top_k`` (request) > 1 picks at random among the k most uncertain, so several annotators
    do not all get the same study. Studies never scored rank after scored ones, at random.
    """

    def __init__(self, score: str, weights: dict[str, float] | None = None, lease_s: int = 600, seed: int | None = None):
        if score not in (*SCORES, "combined"):
            raise ValueError(f"unknown score '{score}'")
        super().__init__(f"Most uncertain unlabelled study by '{score}' (run /scoring/uncertainty to refresh)")
        self.score = score
        self.weights = weights or {"epistemic": 1.0, "tta": 1.0, "classifier": 0.5}
        self.lease_s = lease_s
        self._rng = random.Random(seed)

    def _value(self, info: dict) -> float | None:
        u = info.get("uncertainty")
        if not u:
            return None
        if self.score != "combined":
            return float(u[self.score])
        total = sum(self.weights.values())
        return sum(w * float(u[k]) for k, w in self.weights.items()) / total

    def __call__(self, request, datastore: Datastore):
        client = request.get("client_id")
        now = int(time.time())
        candidates = []
        for image in datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")):
            info = datastore.get_image_info(image)
            leased = any(now - int(v.get("ts", 0)) < self.lease_s and v.get("client_id") != client
                         for v in info.get("strategy", {}).values() if isinstance(v, dict))
            if not leased:
                candidates.append((image, self._value(info)))
        if not candidates:
            return None
        scored = sorted((c for c in candidates if c[1] is not None), key=lambda c: -c[1])
        unscored = [c for c in candidates if c[1] is None]
        self._rng.shuffle(unscored)
        ranked = scored + unscored
        top_k = max(1, int(request.get("top_k", 1)))
        image, value = self._rng.choice(ranked[:top_k])
        return {"id": image, "weight": value if value is not None else 0.0}
