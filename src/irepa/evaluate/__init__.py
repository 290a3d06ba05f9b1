"""Sample-quality metrics with the ADM suite's definitions: FID, sFID, IS, precision / recall, FD_DINOv2.

>>> from irepa.evaluate import Evaluator, InceptionExtractor, reference_stats
>>> ev = Evaluator(InceptionExtractor(device="cuda"), batch_size=100)
>>> ref = reference_stats("VIRTUAL_imagenet256_labeled.npz", ev, size=(256, 256))
>>> result = ev.evaluate(ev.activations(images), ref)    # images: uint8 (N, 256, 256, 3)
>>> result["metrics"]                                     # fid, sfid, precision, recall (+ IS when available)

See ``docs/evaluate.md``.
"""

from .evaluator import Activations, Evaluator, ReferenceStats, load_samples
from .features import FeatureExtractor, Resizer, file_sha256, legacy_bilinear_matrix
from .frechet import FrechetDistanceError, FrechetResult, frechet_distance, frechet_distance_details, gaussian_stats
from .inception import InceptionExtractor, InceptionWeightsError, find_inception_weights
from .inception_score import inception_score, probabilities_from_logits
from .manifold import manifold_radii, precision_recall
from .npz import NpzWriter, check_images, open_npz_array, save_npz
from .references import reference_stats
from .run import build_extractor, evaluate_samples

__all__ = [
    "Activations",
    "Evaluator",
    "FeatureExtractor",
    "FrechetDistanceError",
    "FrechetResult",
    "InceptionExtractor",
    "InceptionWeightsError",
    "NpzWriter",
    "ReferenceStats",
    "Resizer",
    "build_extractor",
    "check_images",
    "evaluate_samples",
    "file_sha256",
    "find_inception_weights",
    "frechet_distance",
    "frechet_distance_details",
    "gaussian_stats",
    "inception_score",
    "legacy_bilinear_matrix",
    "load_samples",
    "manifold_radii",
    "open_npz_array",
    "precision_recall",
    "probabilities_from_logits",
    "reference_stats",
    "save_npz",
]
