"""Scoring for active learning: per-study uncertainty stored in the datastore's image info."""

from __future__ import annotations

import logging
import time

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from radcascade.cascade import Cascade
from radcascade.uncertainty import CascadeUncertainty
from radcascade.volumes import InvalidVolumeError, load_volume

logger = logging.getLogger(__name__)
INFO_KEY = "uncertainty"


class UncertaintyScoring(ScoringMethod):
    """Scores every unlabelled study (MC dropout, TTA, classifier entropy) with the warm models and
    stores the scores, with the model versions they came from, under ``uncertainty`` in its info."""

    def __init__(self, cascade: Cascade, max_voxels: int, passes: int = 6):
        super().__init__("Uncertainty of the cascade per unlabelled study: epistemic (MC dropout), tta, classifier")
        self.cascade = cascade
        self.max_voxels = max_voxels
        self.passes = passes

    def __call__(self, request, datastore: Datastore):
        scorer = CascadeUncertainty(self.cascade, passes=int(request.get("passes", self.passes)))
        versions = {name: m.version() for name, m in (("organ", self.cascade.organ_model),
                                                        ("lesion", self.cascade.lesion_model))}
        if self.cascade.classifier_model is not None:
            versions["classifier"] = self.cascade.classifier_model.version()
        scored, skipped = {}, {}
        for image_id in datastore.get_unlabeled_images():
            try:
                volume = load_volume(datastore.get_image_uri(image_id), self.max_voxels)
            except InvalidVolumeError as e:
                skipped[image_id] = e.reason
                continue
            score = scorer.score(volume).to_json()
            datastore.update_image_info(image_id, {INFO_KEY: {**score, "models": versions, "ts": int(time.time())}})
            scored[image_id] = score
        logger.info("uncertainty scored %d studies (%d skipped)", len(scored), len(skipped))
        return {"scored": len(scored), "skipped": skipped, "scores": scored}
