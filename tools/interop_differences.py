"""Print, per source, how far the imported network is from the reference forward on the golden fixtures.

    python tools/interop_differences.py        # ||ours - reference|| / ||reference||, raw and EMA weights

Reads tests/assets/interop/ (written by tools/make_interop_fixtures.py) and irepa only.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from irepa.interop import import_checkpoint
from irepa.sample.pipeline import build_model_from_config
from irepa.train.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_interop import ASSETS, OPTIONS  # noqa: E402  (the fixtures and the options the tests import them with)


def main() -> None:
    print("| --from | raw weights | EMA weights |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for source, options in [*OPTIONS.items(), ("meanflow", {})]:
            ckpt = load_checkpoint(import_checkpoint(source, ASSETS / f"{source}.pt", Path(tmp) / source, **options))
            golden = torch.load(ASSETS / f"{source}-golden.pt")
            t = 1 - golden["t"] if "jit" in source else golden["t"]  # the fixtures hold JiT's own time
            # MeanFlow's network also reads r; its release is unconditional (one class, index 0)
            times = {"r": golden["r"]} if "r" in golden else {}
            y = golden.get("y", torch.zeros(len(t), dtype=torch.long))
            model = build_model_from_config(ckpt["config"]).eval()
            row = []
            for key, ref in (("model", "out_raw"), ("ema", "out_ema")):
                model.load_state_dict(ckpt[key])
                with torch.no_grad():
                    out = model(golden["x"], t, y, **times)
                row.append(f"{float((out - golden[ref]).norm() / golden[ref].norm()):.1e}")
            print(f"| `{source}` | {row[0]} | {row[1]} |")


if __name__ == "__main__":
    main()
