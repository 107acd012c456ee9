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

The package, by job: :mod:`.config` (modes and options), :mod:`.nets` (the networks),
:mod:`.samples` (lesions of labelled studies, the study-level split), :mod:`.fitting` (the training
regimes of one mode), :mod:`.selection` (a configured mode, ``auto``'s cross-validated choice),
:mod:`.model_file` (publishing and loading, in the one format of :mod:`radcascade.checkpoints`) and
:mod:`.prediction` (classifying a volume's lesions).
"""

from radcascade.classifier.config import AUTO_FAMILIES, CLASSICAL, MODES, RADIOMICS_MODES, ClassifierConfig
from radcascade.classifier.fitting import (FitReport, Schedule, deep_features, evaluate_samples, fit_deep_features,
                                           fit_linear, fit_radiomics, sample_probabilities, schedule_for,
                                           train_network)
from radcascade.classifier.model_file import ClassifierCheckpoint, RadiomicsSpec, load_classifier, publish_classifier
from radcascade.classifier.nets import LesionClassifierNet, RadiomicsInputsMissing, RadiomicsNet
from radcascade.classifier.prediction import (LesionPrediction, LesionRegion, classify_lesions, lesion_regions,
                                              normalised_entropy, predict_lesions)
from radcascade.classifier.samples import LesionSample, lesion_components, lesion_samples, split_by_study
from radcascade.classifier.selection import (TrainedClassifier, auto_candidates, default_depths, n_backbone_blocks,
                                             select_by_cv, train_classifier)

__all__ = [
    "AUTO_FAMILIES", "CLASSICAL", "MODES", "RADIOMICS_MODES", "ClassifierConfig",
    "FitReport", "Schedule", "deep_features", "evaluate_samples", "fit_deep_features", "fit_linear", "fit_radiomics",
    "sample_probabilities", "schedule_for", "train_network",
    "ClassifierCheckpoint", "RadiomicsSpec", "load_classifier", "publish_classifier",
    "LesionClassifierNet", "RadiomicsInputsMissing", "RadiomicsNet",
    "LesionPrediction", "LesionRegion", "classify_lesions", "lesion_regions", "normalised_entropy", "predict_lesions",
    "LesionSample", "lesion_components", "lesion_samples", "split_by_study",
    "TrainedClassifier", "auto_candidates", "default_depths", "n_backbone_blocks", "select_by_cv", "train_classifier",
]
