"""Active-learning strategies served to Slicer's "Next sample"; the ranking is :mod:`radcascade.active_learning`."""

from __future__ import annotations

import random
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from radcascade.active_learning import (
    DEFAULT_WEIGHTS,
    STRATEGY_SCORES,
    Candidate,
    Diversity,
    descriptor,
    pick,
    score_value,
)
from radcascade.serving.scoring import INFO_KEY


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


class MostUncertain(Strategy):
    """The unlabelled study with the highest stored uncertainty (``score``: one of ``active_learning.SCORES`` or
    ``combined``, a weighted mean), skipping studies handed to another client within ``lease_s``.

    ``top_k`` (request) > 1 picks at random among the k most uncertain, so several annotators
    do not all get the same study. Studies never scored rank after scored ones, at random.
    With ``diversity`` (a penalty > 0), studies close to ones ranked above them or served within
    ``diversity_window_s`` rank lower (see :mod:`radcascade.active_learning`).
    """

    def __init__(self, score: str, weights: dict[str, float] | None = None, lease_s: int = 600, seed: int | None = None,
                 diversity: Diversity | None = None, diversity_window_s: int = 3600, lesion_weight: float | None = None):
        if score not in STRATEGY_SCORES:
            raise ValueError(f"unknown score '{score}'")
        if lesion_weight is not None and not 0.0 <= lesion_weight <= 1.0:
            raise ValueError(f"al_lesion_weight must be in [0, 1], got {lesion_weight}")
        described = f"Most uncertain unlabelled study by '{score}'"
        if diversity is not None and diversity.enabled:
            described += f", diversity penalty {diversity.penalty:g}"
        if lesion_weight is not None and score != "classifier":
            described += f", lesion stage weighted {lesion_weight:g}"
        super().__init__(described + " (run /scoring/uncertainty to refresh)")
        self.score = score
        self.weights = weights or dict(DEFAULT_WEIGHTS)
        self.lease_s = lease_s
        self.diversity = diversity
        self.diversity_window_s = diversity_window_s
        self.lesion_weight = lesion_weight
        self._rng = random.Random(seed)

    @staticmethod
    def _served_since(info: dict, since: int) -> list[dict]:
        return [v for v in info.get("strategy", {}).values() if isinstance(v, dict) and int(v.get("ts", 0)) > since]

    def _recently_served(self, datastore: Datastore, now: int) -> list:
        """Descriptors of the studies (labelled or not) any strategy handed out within the window."""
        out = []
        for image in datastore.list_images():
            info = datastore.get_image_info(image)
            d = descriptor(info.get(INFO_KEY))
            if d is not None and self._served_since(info, now - self.diversity_window_s):
                out.append(d)
        return out

    def __call__(self, request, datastore: Datastore):
        client = request.get("client_id")
        now = int(time.time())
        candidates = []
        for image in datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")):
            info = datastore.get_image_info(image)
            if any(v.get("client_id") != client for v in self._served_since(info, now - self.lease_s)):
                continue  # leased to another client
            u = info.get(INFO_KEY)
            candidates.append(Candidate(image, score_value(u, self.score, self.weights, self.lesion_weight), descriptor(u)))
        diverse = self.diversity is not None and self.diversity.enabled
        references = self._recently_served(datastore, now) if diverse and candidates else []
        chosen = pick(candidates, self._rng, int(request.get("top_k", 1)), self.diversity, references)
        if chosen is None:
            return None
        return {"id": chosen.id, "weight": chosen.value if chosen.value is not None else 0.0}
