"""The assembled run (:class:`irepa.train.run.Run`): its state dict is a complete checkpoint, and a
checkpoint written by an earlier release still loads, samples and resumes.

The fixture ``assets/sit_irepa_v0.1_step3.pt`` was written by ``irepa train`` of release 0.1.0 (a
1-block SiT on 8 px synthetic images, iREPA on HOG targets, two EMAs, stopped after 3 of 6 steps);
``assets/sit_irepa_v0.1.json`` holds what that release logged for the uninterrupted 6-step run and
the images it sampled from the checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import tiny_overrides, with_random_encoders

from irepa.config import config_from_checkpoint, load_config
from irepa.diffusion.samplers import SamplerConfig
from irepa.recipes import recipe_overrides
from irepa.sample.pipeline import load_generator
from irepa.train.checkpoint import load_checkpoint
from irepa.train.run import Run, encoder_dtype
from irepa.train.trainer import train

ASSETS = Path(__file__).parent / "assets"
FIXTURE = ASSETS / "sit_irepa_v0.1_step3.pt"
STEPS = 6


def _config(out, **extra):
    common = tiny_overrides(out, **{
        "data.synthetic_size": 48, "align.encoders": "hog", "align.projector_hidden_dim": 32, "train.steps": STEPS,
        "train.warmup_steps": 2, "train.ema_decay": 0.9, "train.extra_ema_decays": [0.5], "train.ema_warmup": True,
        "train.grad_accum": 2, **extra})
    return with_random_encoders(load_config(None, recipe_overrides("sit-irepa", common)))


def _weights(run: Run) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in run.backbone.state_dict().items()}
    out.update({f"aligner.{k}": v for k, v in run.aligner.state_dict().items()})
    for i, ema in enumerate(run.emas):
        out.update({f"ema{i}.{k}": v for k, v in ema.shadow.state_dict().items()})
    return out


def test_state_dict_restores_a_run_that_continues_exactly(tmp_path):
    """3 steps, state_dict through a file, a new Run restored from it, 3 more steps == 6 steps straight."""
    straight = Run.build(_config(tmp_path / "a"))
    batches = straight.batches()
    straight_losses = [float(straight.step(batches)[1]["loss"]) for _ in range(STEPS)]

    first = Run.build(_config(tmp_path / "b"))
    batches = first.batches()
    first_losses = [float(first.step(batches)[1]["loss"]) for _ in range(3)]
    torch.save(first.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    assert state["step"] == 3 and len(state["extra_ema"]) == 1

    second = Run.build(_config(tmp_path / "c"), state=state)
    assert second.steps_done == 3
    batches = second.batches()  # the data order continues from step 3
    second_losses = [float(second.step(batches)[1]["loss"]) for _ in range(3)]
    assert first_losses + second_losses == straight_losses
    for key, value in _weights(straight).items():
        torch.testing.assert_close(_weights(second)[key], value, rtol=0, atol=0, msg=key)
    opt_a, opt_b = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    for index, moments in opt_a.items():
        for name, value in moments.items():
            torch.testing.assert_close(opt_b[index][name], value, rtol=0, atol=0)


def test_a_state_of_another_run_is_refused_naming_the_fields(tmp_path):
    run = Run.build(_config(tmp_path / "a"))
    state = run.state_dict()
    other = Run.build(_config(tmp_path / "b", **{"train.lr": 5e-4}))
    with pytest.raises(ValueError, match="train.lr"):
        other.load_state_dict(state)


def test_encoders_run_at_the_run_precision_on_cuda_and_float32_on_a_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert encoder_dtype("fp16", cuda) == torch.float16
    assert encoder_dtype("bf16", cuda) == torch.bfloat16
    assert encoder_dtype("fp32", cuda) == encoder_dtype("no", cuda) == torch.float32  # "no": the old name
    assert {encoder_dtype(p, cpu) for p in ("no", "fp16", "bf16")} == {torch.float32}


# ------------------------------------------------------------------ a checkpoint of release 0.1.0


@pytest.fixture
def old_run(tmp_path):
    """A run folder holding the release-0.1.0 checkpoint (after step 3 of 6), and that release's record."""
    folder = tmp_path / "old-run"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURE, folder / "checkpoints" / "step_0000003.pt")
    expected = json.loads((ASSETS / "sit_irepa_v0.1.json").read_text())["sit"]
    return folder, expected


def test_a_checkpoint_of_release_0_1_loads_into_a_run(old_run):
    folder, _ = old_run
    state = load_checkpoint(folder)
    cfg = config_from_checkpoint(state)
    cfg.out = str(folder)
    run = Run.build(cfg, state=state)
    assert run.steps_done == 3 and len(run.emas) == 2
    for key, value in state["model"].items():
        assert torch.equal(run.backbone.state_dict()[key], value), key
    for ema, stored in zip(run.emas, [state["ema"], *state["extra_ema"]], strict=True):
        for key, value in stored.items():
            assert torch.equal(ema.shadow.state_dict()[key], value), key
    # the run's own sampler and irepa sample's loader see the same EMA weights: the same images
    labels, seeds = torch.tensor([0, 1, 2, 3]), [0, 1, 2, 3]
    sampler = SamplerConfig(kind="ode-euler", steps=4)
    ours = run.generator().generate(labels, seeds, sampler)
    assert torch.equal(ours, load_generator(folder).generate(labels, seeds, sampler))


def test_a_checkpoint_of_release_0_1_samples_what_that_release_sampled(old_run):
    folder, expected = old_run
    images = load_generator(folder).generate(torch.tensor([0, 1, 2, 3]), [0, 1, 2, 3],
                                            SamplerConfig(kind="ode-euler", steps=4))
    assert list(images.shape) == expected["samples_shape"]
    then = torch.tensor(expected["samples_ode_euler_4_steps_seeds_0_3_labels_0_3"]).view(images.shape)
    # identical on the machine that wrote it; a rounding step of another CPU's kernels moves a pixel by one
    assert (images.int() - then.int()).abs().max() <= 1


def test_a_checkpoint_of_release_0_1_resumes_on_that_release_trajectory(old_run):
    folder, expected = old_run
    cfg = config_from_checkpoint(load_checkpoint(folder))
    cfg.out = str(folder)
    result = train(cfg, resume=True)
    assert result.step == STEPS
    assert result.losses == pytest.approx(expected["losses_steps_1_to_6"][3:], rel=1e-5)
    resumed = load_checkpoint(folder)
    assert resumed["step"] == STEPS and set(resumed) >= {"model", "ema", "extra_ema", "optimizer", "aligner"}
