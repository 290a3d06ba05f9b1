"""Which class sample ``i`` of a sampling run gets: a function of (mode, classes, seed, i) only.

* ``random`` (the default): ``classes[j]`` with
  ``j = numpy.random.default_rng([LABEL_STREAM, seed, i]).integers(len(classes))``: uniform and
  independent, as the reference evaluation protocol draws labels, yet the same for sample ``i``
  however the run is split over processes, batched or resumed.
* ``balanced``: ``classes[i % len(classes)]``: every class equally often (exactly when N is a multiple
  of the class count), the first ``len(classes)`` samples showing each class once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from irepa.diffusion.samplers import LABEL_MODES

LABEL_STREAM = 0x6C6162656C  # keeps the label draws apart from any other randomness keyed by (seed, i)
LABEL_SCHEMES = {
    "balanced": "cyclic: sample i gets classes[i % len(classes)]",
    "random": f"uniform: sample i gets classes[numpy.random.default_rng([{LABEL_STREAM}, seed, i])"
              ".integers(len(classes))]",
}


def sample_labels(mode: str, classes: Sequence[int], seed: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """int64 labels of the sample ``indices`` (``seed`` and the indices must be >= 0)."""
    indices = np.asarray(indices, dtype=np.int64)
    table = np.asarray(classes, dtype=np.int64)
    if mode == "balanced":
        return table[indices % len(table)]
    if mode != "random":
        raise ValueError(f"unknown label mode {mode!r}; valid: {', '.join(LABEL_MODES)}")
    picks = [np.random.default_rng([LABEL_STREAM, seed, int(i)]).integers(len(table)) for i in indices]
    return table[np.asarray(picks, dtype=np.int64)]
