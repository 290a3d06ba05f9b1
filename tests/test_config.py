from pathlib import Path

import pytest
import yaml

import irepa
from irepa.cli import build_parser, main
from irepa.config import (
    RunConfig,
    config_diff,
    load_config,
    overrides_from_args,
    reference_configs,
    save_config,
    to_dict,
)
from irepa.recipes import recipe_overrides

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


# ---------------------------------------------------------------------------------------------
# bad values, through the command line: one line naming the dotted key, exit 2, no traceback

# section -> (an int field, a float field, a field that holds a list or a pair)
SECTION_FIELDS = {
    "model": ("input_size", None, "name"),
    "data": ("resolution", None, "source"),
    "align": ("depth", "coeff", "norm"),
    "objective": (None, "p_std", "path"),
    "objective.meanflow": (None, "ratio", "ratio"),
    "train": ("steps", "lr", "betas"),
    "sample": ("steps", "cfg_scale", "kind"),
    "end_to_end": ("disc_layers", "lr", "vae"),
}


def _bad_values() -> list[tuple[str, str, str, str]]:
    """(case id, dotted key, value, text the message must hold) for every section."""
    cases = []
    for section, (int_field, float_field, shaped) in SECTION_FIELDS.items():
        number = f"{section}.{int_field or float_field}"
        cases += [(f"{section}-empty", number, "", "is empty"), (f"{section}-null", number, "null", "is null")]
        if int_field:
            cases.append((f"{section}-float-for-int", f"{section}.{int_field}", "2.9", "whole number"))
        finite = f"{section}.{float_field or int_field}"
        cases += [(f"{section}-nan", finite, "nan", "finite"), (f"{section}-inf", finite, "inf", "finite")]
        key = f"{section}.{shaped}"
        if shaped == "betas":
            cases.append((f"{section}-wrong-shape", key, "0.9", "2 comma-separated values"))
        else:
            cases.append((f"{section}-wrong-shape", key, "[1, 2]", "single value"))
    return cases


def _cli(*argv: str) -> int:
    """``irepa ARGV`` in this process; usage errors leave argparse through SystemExit, as for any CLI."""
    try:
        return main(list(argv))
    except SystemExit as stop:
        return int(stop.code)


def _one_line(capsys, code: int, command: str = "train") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(f"irepa {command}: "), err
    return lines[0]


@pytest.mark.parametrize(("key", "value", "says"), [c[1:] for c in _bad_values()], ids=[c[0] for c in _bad_values()])
def test_bad_values_of_every_section_are_refused_naming_the_key(key, value, says, tmp_path, capsys):
    code = main(["train", f"--{key}", value, "--out", str(tmp_path / "run")])
    line = _one_line(capsys, code)
    assert key in line and says in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("section", sorted(SECTION_FIELDS))
def test_unknown_keys_of_every_section_are_refused_naming_the_key(section, tmp_path, capsys):
    node: dict = {"nope": 1}
    for part in reversed(section.split(".")):
        node = {part: node}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(node))
    line = _one_line(capsys, main(["train", "--config", str(config), "--out", str(tmp_path / "run")]))
    assert f"unknown key {section}.nope" in line
    line = _one_line(capsys, _cli("train", f"--{section}.nope", "1"))  # an option no parser knows
    assert f"--{section}.nope" in line and "see `irepa train --help`" in line


def test_options_are_never_abbreviated_and_usage_errors_name_the_command(capsys):
    line = _one_line(capsys, _cli("train", "--train.ste", "3"))
    assert "--train.ste" in line and "see `irepa train --help`" in line
    line = _one_line(capsys, _cli("sample", "--ckpt", "x", "--sample.ste", "3"), "sample")
    assert "--sample.ste" in line and "see `irepa sample --help`" in line
    args = build_parser().parse_args(["train", "--train.steps", "3"])
    assert overrides_from_args(args) == {"train.steps": 3}


@pytest.mark.parametrize("argv", [["--cfg-scale", "nan"], ["--cfg-scale", "inf"], ["--sample.cfg_scale", "inf"],
                                  ["--sample.steps", "2.5"], ["--sample.guidance_high", ""]])
def test_sample_refuses_bad_sampler_settings_before_reading_the_checkpoint(argv, tmp_path, capsys):
    line = _one_line(capsys, main(["sample", "--ckpt", str(tmp_path / "none"), *argv]), "sample")
    assert "sample." in line


def test_a_folder_as_config_is_named_a_folder(tmp_path, capsys):
    line = _one_line(capsys, main(["train", "--config", str(tmp_path)]))
    assert f"{tmp_path} is a folder" in line


def test_reference_configs_are_addressable_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert {"irepa", "repa", "vanilla", "jit-irepa", "meanflow-irepa", "irepa-e"} <= set(reference_configs())
    by_name = load_config("jit-irepa")
    assert to_dict(by_name) == to_dict(load_config(CONFIGS / "jit-irepa.yaml"))
    assert to_dict(load_config("irepa.yaml")) == to_dict(load_config(CONFIGS / "irepa.yaml"))
    with pytest.raises(ValueError, match="valid names: .*jit-irepa"):
        load_config("no-such-config")
    mine = tmp_path / "irepa.yaml"  # a file in the working folder wins over the shipped name
    mine.write_text(yaml.safe_dump({"recipe": "sit", "train": {"lr": 0.5}}))
    assert load_config("irepa.yaml").train.lr == 0.5


def test_recipe_aliases_store_one_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"recipe": "repa-e-irepa"}))
    from_file = to_dict(load_config(config))
    from_alias = to_dict(load_config(None, recipe_overrides("irepa-e")))
    from_name = to_dict(load_config(None, recipe_overrides("repa-e-irepa")))
    assert from_file == from_alias == from_name and from_file["recipe"] == "repa-e-irepa"
    assert load_config(None, {"recipe": "irepa"}).recipe == "sit-irepa"
    assert to_dict(load_config(None, {"recipe": "irepa"})) == to_dict(load_config(None, recipe_overrides("irepa")))
