"""Leakage metrics of a model inversion attack."""

from lsmia.metrics.accuracy import attack_accuracy, topk_accuracy
from lsmia.metrics.attributes import (
    AttributePredictor,
    attribute_leakage,
    load_attribute_predictor,
    save_attribute_predictor,
    train_attribute_predictor,
)
from lsmia.metrics.delta import delta_eval, delta_eval_per_target, delta_face
from lsmia.metrics.evaluate import evaluate_attack
from lsmia.metrics.features import extract_features, predict_logits
from lsmia.metrics.fid import feature_fid, frechet_distance, inception_fid, tf_inception_fid
from lsmia.metrics.knowledge import knowledge_extraction
from lsmia.metrics.prdc import prdc, prdc_per_class

__all__ = [
    "AttributePredictor",
    "attack_accuracy",
    "attribute_leakage",
    "delta_eval",
    "delta_eval_per_target",
    "delta_face",
    "evaluate_attack",
    "extract_features",
    "feature_fid",
    "frechet_distance",
    "inception_fid",
    "knowledge_extraction",
    "load_attribute_predictor",
    "prdc",
    "prdc_per_class",
    "predict_logits",
    "save_attribute_predictor",
    "tf_inception_fid",
    "topk_accuracy",
    "train_attribute_predictor",
]
