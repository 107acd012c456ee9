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
