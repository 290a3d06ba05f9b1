from pathlib import Path

import pytest
import yaml

import irepa
from irepa.cli import build_parser
from irepa.config import RunConfig, config_diff, load_config, overrides_from_args, save_config, to_dict

CONFIGS = Path(irepa.__file__).parent / "configs"


def test_shipped_recipes_match_the_method():
    repa = load_config(CONFIGS / "repa.yaml")
    irepa = load_config(CONFIGS / "irepa.yaml")
    vanilla = load_config(CONFIGS / "vanilla.yaml")
    assert (repa.align.projector, repa.align.coeff, repa.align.norm) == ("mlp", 0.5, "none")
    assert (irepa.align.projector, irepa.align.kernel_size, irepa.align.coeff) == ("conv", 3, 1.0)
    assert (irepa.align.norm, irepa.align.zscore_alpha) == ("zscore", 0.6)
    assert not vanilla.align.enabled
    assert irepa.train.lr == 1e-4 and tuple(irepa.train.betas) == (0.9, 0.999) and irepa.train.grad_clip == 1.0


def test_command_line_overrides_win_over_yaml(tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "--config",
            str(CONFIGS / "irepa.yaml"),
            "--train.lr",
            "3e-4",
            "--align.encoders",
            "dinov2-vit-b:0.5,mocov3-vit-l",
            "--align.norm",
            "none",
        ]
    )
    cfg = load_config(args.config, overrides_from_args(args))
    assert cfg.train.lr == 3e-4 and cfg.align.norm == "none"
    assert [(e.name, e.coeff) for e in cfg.align.encoders] == [("dinov2-vit-b", 0.5), ("mocov3-vit-l", None)]


def test_round_trip_and_unknown_keys(tmp_path):
    cfg = load_config(CONFIGS / "irepa.yaml", {"model.name": "SiT-B/2", "train.betas": [0.9, 0.95]})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert isinstance(again.train.betas, tuple)
    with pytest.raises(ValueError, match="lrr"):
        load_config(None, {"train.lrr": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"stepz": 3}}))
    with pytest.raises(ValueError, match="stepz"):
        load_config(bad)
    with pytest.raises(ValueError, match="train.steps needs a whole number"):
        load_config(None, {"train.steps": "many"})


def test_config_diff_lists_changed_fields():
    a, b = to_dict(RunConfig()), to_dict(RunConfig())
    b["train"]["lr"] = 2.0
    b["align"]["norm"] = "zscore"
    assert config_diff(a, b) == {"align.norm": ("none", "zscore"), "train.lr": (1e-4, 2.0)}
    assert config_diff(a, b, ["align"]) == {"align.norm": ("none", "zscore")}
