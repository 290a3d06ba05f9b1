"""REPA-E: the trainable-VAE codec, the end-to-end step's gradients, LPIPS's input range, a tiny
end-to-end run with exact resume, and the export of the tuned VAE."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import irepa
from irepa.config import load_config
from irepa.errors import ConfigError, WeightsError

pytest.importorskip("diffusers")
pytest.importorskip("lpips")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_overrides(out: Path, **extra) -> dict:
    """A 16 px REPA-E run: the small random VAE (f2 -> 4 x 8 x 8 latents), a 2-block SiT, HOG targets."""
    overrides = {
        "recipe": "repa-e",
        "model.name": "SiT-S/2",
        "model.depth": 2,
        "model.hidden_size": 32,
        "model.num_heads": 2,
        "model.input_size": 8,
        "model.in_channels": 4,
        "model.num_classes": 4,
        "data.source": "synthetic",
        "data.resolution": 16,
        "data.num_classes": 4,
        "data.synthetic_size": 64,
        "data.num_workers": 0,
        "align.encoders": "hog",
        "align.depth": 1,
        "align.projector_hidden_dim": 64,
        "end_to_end.vae": "random",
        "end_to_end.perceptual_weights": "random",
        "end_to_end.disc_layers": 2,
        "end_to_end.disc_channels": 16,
        "end_to_end.stats_images": 32,
        "train.batch_size": 8,
        "train.lr": 1e-3,
        "end_to_end.lr": 1e-3,
        "train.steps": 6,
        "train.log_every": 1,
        "train.ckpt_every": 3,
        "train.sample_every": 0,
        "train.report_to": ["none"],
        "train.ema_decay": 0.9,
        "out": str(out),
    }
    overrides.update(extra)
    return overrides


def tiny_config(out: Path, **extra):
    cfg = load_config(None, tiny_overrides(out, **extra))
    for e in cfg.align.encoders:
        e.weights = "random"
    return cfg


def build_step(tmp_path):
    """The run the trainer builds, and one batch with its targets and draw."""
    from irepa.codecs import unit_images
    from irepa.train.run import Run

    run = Run.build(tiny_config(tmp_path / "run"))
    step, codec, objective = run.end_to_end, run.codec, run.objective
    batch = {k: torch.stack([run.dataset[i][k] for i in range(8)]) for k in ("image", "label")}
    targets = run.encoder_targets(batch)
    gen = torch.Generator().manual_seed(1)
    images = unit_images(batch["image"]) * 2 - 1
    out = codec.autoencode(images, gen)
    draw = objective.draw(out.z.detach(), batch["label"], gen)
    return step, images, out, batch["label"], targets, draw


def _vae_grads(loss, vae):
    grads = torch.autograd.grad(loss, list(vae.parameters()), retain_graph=True, allow_unused=True)
    return dict(zip([n for n, _ in vae.named_parameters()], grads))


def test_diffusion_loss_gives_the_vae_no_gradient_and_alignment_does(tmp_path):
    step, images, out, labels, targets, draw = build_step(tmp_path)
    codec, objective, model = step.codec, step.objective, step.model

    # the SiT update: the detached, batch-normalised latents -> exactly no gradient into the VAE
    x0 = step.sit_input(out.z, 0)
    diffusion = objective.loss(model, x0, labels, None, targets, draw=draw)["loss_diffusion"]
    assert all(g is None for g in _vae_grads(diffusion, codec.vae).values())
    # control: the same loss on latents that keep their graph does reach the VAE
    attached = objective.loss(model, codec.normalize(out.z), labels, None, targets, draw=draw)["loss_diffusion"]
    assert any(g is not None and g.abs().sum() > 0 for g in _vae_grads(attached, codec.vae).values())

    # the VAE update's alignment term: through the frozen SiT into the encoder, not the decoder
    from irepa.train.end_to_end import frozen

    with frozen(model, eval_mode=True), frozen(step.discriminator, eval_mode=False):
        terms = step.vae_losses(images, out, labels, targets, draw)
        grads = _vae_grads(terms["vae/align"], codec.vae)
    encoder = [g for n, g in grads.items() if n.startswith("encoder.")]
    decoder = [g for n, g in grads.items() if n.startswith("decoder.")]
    assert encoder and all(g is not None for g in encoder) and sum(g.abs().sum() for g in encoder) > 0
    assert all(g is None or g.abs().sum() == 0 for g in decoder)


def test_vae_update_leaves_the_sit_and_its_latent_statistics_unchanged(tmp_path):
    step, images, out, labels, targets, draw = build_step(tmp_path)
    model, codec = step.model, step.codec
    sit_before = {k: v.clone() for k, v in model.state_dict().items()}
    norm_before = {k: v.clone() for k, v in codec.latent_norm.state_dict().items()}
    vae_before = {k: v.clone() for k, v in codec.vae.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]

    terms = step.update_vae(images, out, labels, targets, draw)

    assert torch.isfinite(terms["vae/loss"]) and terms["vae/grad_norm"] > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, sit_before[k]), k
    for k, v in codec.latent_norm.state_dict().items():
        assert torch.equal(v, norm_before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags and model.training
    assert any(not torch.equal(v, vae_before[k]) for k, v in codec.vae.state_dict().items())

    # the SiT's input is what moves the running statistics, and their EMA follows
    step.sit_input(out.z, 0)
    assert not torch.equal(codec.latent_norm.running_mean, norm_before["running_mean"])
    decay = step.ema_decay
    expected = decay * norm_before["running_mean"] + (1 - decay) * codec.latent_norm.running_mean
    torch.testing.assert_close(codec.latent_norm_ema.running_mean, expected)


def test_discriminator_update_leaves_the_vae_unchanged(tmp_path):
    step, images, out, labels, targets, draw = build_step(tmp_path)
    vae_before = {k: v.clone() for k, v in step.codec.vae.state_dict().items()}
    disc_before = {k: v.clone() for k, v in step.discriminator.state_dict().items()}

    terms = step.update_discriminator(images, out.recon)

    for k, v in step.codec.vae.state_dict().items():
        assert torch.equal(v, vae_before[k]), k
    assert all(p.grad is None for p in step.codec.vae.parameters())
    assert any(not torch.equal(v, disc_before[k]) for k, v in step.discriminator.state_dict().items())
    real, fake = step.discriminator(images), step.discriminator(out.recon.detach())
    assert terms["disc/hinge"] > 0 and real.shape == fake.shape


def test_lpips_takes_unit_range_images_like_the_package_on_minus_one_to_one():
    import lpips

    from irepa.train.autoencoder_losses import PerceptualLoss

    ours = PerceptualLoss("random")
    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    reference.net.load_state_dict(ours.lpips.net.state_dict())  # the same (untrained) trunk
    shipped = torch.load(Path(lpips.__file__).parent / "weights/v0.1/vgg.pth", map_location="cpu")
    for k, v in shipped.items():  # the calibrated heads come from the package
        assert torch.equal(ours.lpips.state_dict()[k], v)

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 32, 32, generator=gen), torch.rand(3, 3, 32, 32, generator=gen)
    expected = reference(a * 2 - 1, b * 2 - 1).flatten()  # the package's documented input: [-1, 1]
    torch.testing.assert_close(ours(a, b), expected, rtol=1e-5, atol=1e-7)
    # feeding [-1, 1] images to a [0, 1] interface (as the reference training script does) is another number
    assert not torch.allclose(ours(a * 2 - 1, b * 2 - 1), expected, rtol=1e-2)


def test_lpips_trunk_loads_a_torchvision_vgg16_state_dict(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    from irepa.train.autoencoder_losses import PerceptualLoss

    features = make_layers(cfgs["D"])  # VGG16's conv stack, keys as in torchvision's vgg16 state dict
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    loss = PerceptualLoss(str(tmp_path / "vgg16.pth"))
    torch.testing.assert_close(loss.lpips.net.slice1[0].weight, features[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(getattr(loss.lpips.net.slice5, "28").bias, features[28].bias, rtol=0, atol=0)

    torch.save({"classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="VGG16"):
        PerceptualLoss(str(tmp_path / "other.pth"))


def test_missing_weights_offline_name_what_to_download(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from irepa.codecs.trainable import load_trainable_vae
    from irepa.train.autoencoder_losses import PatchDiscriminator, PerceptualLoss

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as err:
        PerceptualLoss(None)
    assert "timm/vgg16.tv_in1k" in str(err.value) and "vgg16-397923af.pth" in str(err.value)
    with pytest.raises(WeightsError, match="sdvae-f8d4-discriminator-ckpt.pt"):
        PatchDiscriminator().load_weights("REPA-E/sdvae:sdvae-f8d4-discriminator-ckpt.pt")
    with pytest.raises(WeightsError, match="huggingface-cli download nobody/no-such-vae"):
        load_trainable_vae("nobody/no-such-vae")


def test_patch_discriminator_has_the_pix2pix_shape_and_loads_its_keys(tmp_path):
    from irepa.train.autoencoder_losses import PatchDiscriminator

    disc = PatchDiscriminator()  # 3 layers, 64 channels: the 70 x 70 PatchGAN, 30 x 30 logits at 256 px
    assert disc(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    # taming's NLayerDiscriminator layout (what published discriminator checkpoints hold): conv, LeakyReLU,
    # then (conv without bias, batch-norm, LeakyReLU) x 3, then the 1-channel head
    layout = {"main.0.weight": (64, 3, 4, 4), "main.0.bias": (64,), "main.2.weight": (128, 64, 4, 4),
              "main.3.weight": (128,), "main.5.weight": (256, 128, 4, 4), "main.6.weight": (256,),
              "main.8.weight": (512, 256, 4, 4), "main.9.weight": (512,), "main.11.weight": (1, 512, 4, 4),
              "main.11.bias": (1,)}
    params = {k: tuple(v.shape) for k, v in disc.named_parameters() if not k.endswith(".bias") or k in layout}
    assert params == layout
    other = PatchDiscriminator()
    torch.save(other.state_dict(), tmp_path / "disc.pt")
    disc.load_weights(str(tmp_path / "disc.pt"))
    for k, v in other.state_dict().items():
        assert torch.equal(disc.state_dict()[k], v)
    with pytest.raises(WeightsError, match="disc_layers"):
        PatchDiscriminator(layers=2).load_weights(str(tmp_path / "disc.pt"))


def test_ema_averages_float_buffers_copies_counters_and_keeps_constants():
    from irepa.train.ema import update_average

    live, shadow = torch.nn.BatchNorm2d(3, affine=False), torch.nn.BatchNorm2d(3, affine=False)
    live.register_buffer("constant", torch.randn(4))
    shadow.register_buffer("constant", live.constant.clone())
    live(torch.randn(8, 3, 4, 4) * 3 + 1)
    update_average(shadow, live, 0.75)
    torch.testing.assert_close(shadow.running_mean, 0.25 * live.running_mean)  # shadow started at 0
    torch.testing.assert_close(shadow.running_var, 0.75 + 0.25 * live.running_var)
    assert int(shadow.num_batches_tracked) == 1
    assert torch.equal(shadow.constant, live.constant)


def test_sit_hidden_at_is_the_hidden_state_of_the_full_forward():
    from irepa.align import Aligner
    from irepa.models import create_model
    from irepa.train.aligned_model import AlignedModel

    torch.manual_seed(0)
    sit = create_model("SiT-S/2", depth=3, hidden_size=32, num_heads=2, input_size=8, in_channels=4, num_classes=4)
    for p in sit.parameters():  # move off the zero initialisation so every block matters
        p.data.add_(0.05 * torch.randn_like(p))
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 3])
    _, hidden = sit(x, t, y, return_hidden_at=2)
    assert torch.equal(sit.hidden_at(x, t, y, 2), hidden)
    aligner = Aligner(32, {"e": 16}, sit.grid, projector="mlp", projector_hidden_dim=8, norm="none")
    targets = {"e": torch.randn(2, 16, 16)}
    model = AlignedModel(sit, aligner, 2)
    assert torch.equal(model.align_only(x, t, y, targets).loss, model(x, t, y, targets)[1].loss)


def test_recipe_names_and_configs():
    from irepa.recipes import split_recipe_name

    configs = Path(irepa.__file__).parent / "configs"
    repa_e = load_config(None, {"recipe": "repa-e"})
    assert repa_e.end_to_end.enabled and repa_e.align.projector == "mlp" and repa_e.align.norm == "none"
    irepa_e = load_config(None, {"recipe": "repa-e-irepa"})
    assert irepa_e.end_to_end.enabled and irepa_e.align.projector == "conv" and irepa_e.align.norm == "zscore"
    assert split_recipe_name("repa-e") == ("repa-e", "repa")
    assert split_recipe_name("irepa-e") == ("repa-e", "irepa")  # the paper's name for iREPA-E
    assert dataclasses.replace(load_config(None, {"recipe": "irepa-e"}), recipe="repa-e-irepa") == irepa_e
    with pytest.raises(ConfigError, match="repa-e-irepa"):
        split_recipe_name("repa-e-vanilla")
    for name, projector in (("repa-e.yaml", "mlp"), ("irepa-e.yaml", "conv")):
        cfg = load_config(configs / name)
        assert cfg.end_to_end.enabled and cfg.align.projector == projector
        assert (cfg.end_to_end.align_coeff, cfg.end_to_end.kl_weight, cfg.end_to_end.gan_weight) == (1.5, 1e-6, 0.1)
        assert cfg.model.name == "SiT-XL/2" and cfg.data.resolution == 256


def test_end_to_end_refuses_settings_it_cannot_honour(tmp_path):
    from irepa.train.trainer import train

    with pytest.raises(ConfigError, match="model.in_channels 4 and model.input_size 8"):
        train(tiny_config(tmp_path / "a", **{"model.input_size": 16}))
    with pytest.raises(ConfigError, match="grad_accum"):
        train(tiny_config(tmp_path / "b", **{"train.grad_accum": 2}))
    with pytest.raises(ConfigError, match="disc_layers"):
        train(tiny_config(tmp_path / "c", **{"end_to_end.disc_layers": 3}))


# ------------------------------------------------------------------------ a tiny run, resumed and exported


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The same 6-step run uninterrupted and split 3 + 3 (a checkpoint and a resume in between)."""
    from irepa.train.trainer import train

    root = tmp_path_factory.mktemp("repa_e")
    full = train(tiny_config(root / "full"))
    first = train(tiny_config(root / "split"), stop_after=3)
    second = train(tiny_config(root / "split"), resume=True)
    return root, full, first, second


def _metrics(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "steps_per_s"} for row in csv.DictReader(f)]


def test_resumed_end_to_end_run_equals_the_uninterrupted_one(tiny_runs):
    from irepa.train.checkpoint import load_checkpoint

    root, full, first, second = tiny_runs
    assert second.step == 6 and first.losses + second.losses == full.losses
    assert _metrics(root / "split") == _metrics(root / "full")  # VAE, discriminator and SiT losses, bit for bit
    a, b = load_checkpoint(root / "full" / "checkpoints"), load_checkpoint(root / "split" / "checkpoints")
    for part in ("vae", "latent_norm", "latent_norm_ema"):
        for k, v in a["codec"][part].items():
            assert torch.equal(v, b["codec"][part][k]), (part, k)
    for k, v in a["end_to_end"]["discriminator"].items():
        assert torch.equal(v, b["end_to_end"]["discriminator"][k]), k
    for k, v in a["ema"].items():
        assert torch.equal(v, b["ema"][k]), k
    assert set(a["end_to_end"]) == {"discriminator", "lecam", "vae_optimizer", "disc_optimizer"}


def test_tiny_end_to_end_run_lowers_the_sit_and_reconstruction_losses(tmp_path):
    from irepa.train.trainer import train

    steps = 64
    extra = {"train.steps": steps, "train.ckpt_every": 100, "train.lr": 2e-3, "model.hidden_size": 64}
    train(tiny_config(tmp_path / "learn", **extra))
    rows = _metrics(tmp_path / "learn")
    assert len(rows) == steps

    def mean(key, part):
        values = [float(r[key]) for r in part]
        return sum(values) / len(values)

    early, late = rows[:8], rows[-8:]
    assert mean("loss_diffusion", late) < 0.9 * mean("loss_diffusion", early)
    assert mean("vae/l1", late) < 0.75 * mean("vae/l1", early)
    assert mean("vae/align", late) < mean("vae/align", early)  # the VAE's latents align better, too


def test_export_loads_with_diffusers_and_matches_the_in_run_vae(tiny_runs, tmp_path):
    from diffusers import AutoencoderKL

    from irepa.cli import main
    from irepa.codecs import TrainableVAECodec, codec_from_checkpoint
    from irepa.train.checkpoint import load_checkpoint

    root = tiny_runs[0]
    out = tmp_path / "e2e-vae"
    assert main(["export-vae", str(root / "full"), "--out", str(out)]) == 0
    assert main(["export-vae", str(root / "full"), "--out", str(out)]) != 0  # never overwritten

    codec = codec_from_checkpoint(load_checkpoint(root / "full" / "checkpoints"))
    assert isinstance(codec, TrainableVAECodec)
    exported = AutoencoderKL.from_pretrained(str(out)).eval()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ours, theirs = codec.vae.encode(images).latent_dist, exported.encode(images).latent_dist
        torch.testing.assert_close(theirs.mean, ours.mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(theirs.logvar, ours.logvar, rtol=0, atol=1e-6)
        torch.testing.assert_close(exported.decode(ours.mean).sample, codec.vae.decode(ours.mean).sample,
                                   rtol=0, atol=1e-6)
    stats = json.loads((out / "latent_stats.json").read_text())
    mean, std = codec.statistics(ema=True)
    torch.testing.assert_close(torch.tensor(stats["mean"]), mean)
    torch.testing.assert_close(torch.tensor(exported.config.latents_std), std)


def test_exported_vae_makes_a_latent_cache(tiny_runs, tmp_path):
    from irepa.codecs.trainable import TrainableVAECodec
    from irepa.data import DataConfig
    from irepa.data.prepare import Processes, prepare_latents
    from irepa.train.checkpoint import load_checkpoint

    root = tiny_runs[0]
    codec = TrainableVAECodec.from_checkpoint_state(load_checkpoint(root / "full" / "checkpoints")["codec"])
    folder = codec.save_pretrained(tmp_path / "e2e-vae")
    data = DataConfig(source="synthetic", resolution=16, synthetic_size=8, num_classes=4, num_workers=0)
    index = prepare_latents(data, str(folder), tmp_path / "cache", batch_size=4, num_workers=0, processes=Processes())
    assert index["complete"] and index["latent_shape"] == [4, 8, 8]


def test_sampling_decodes_with_the_tuned_vae_and_the_ema_statistics(tiny_runs):
    from irepa.diffusion.samplers import SamplerConfig
    from irepa.sample.pipeline import load_generator

    root = tiny_runs[0]
    gen = load_generator(root / "full" / "checkpoints")
    codec = gen.codec
    assert codec.kind == "trainable-vae" and codec.decode_with_ema
    images = gen.generate(torch.tensor([0, 1]), [0, 1], SamplerConfig(kind="ode-euler", steps=2))
    assert images.shape == (2, 16, 16, 3) and images.dtype == torch.uint8
    x = torch.randn(2, 4, 8, 8)
    mean, std = codec.statistics(ema=True)
    with torch.no_grad():
        expected = codec.vae.decode(x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).sample
    torch.testing.assert_close(codec.decode(x), expected)
    raw = load_generator(root / "full" / "checkpoints", use_ema=False).codec
    assert not raw.decode_with_ema and not torch.equal(raw.statistics(False)[0], mean)


def test_cli_smoke_trains_samples_and_exports(tmp_path, capsys):
    from diffusers import AutoencoderKL

    from irepa.cli import main

    run = tmp_path / "smoke"
    tiny = ["--model.depth", "2", "--model.hidden_size", "32", "--model.num_heads", "2", "--align.encoders", "hog",
            "--align.depth", "1", "--align.projector_hidden_dim", "32", "--steps", "2", "--train.ckpt_every", "2",
            "--train.sample_every", "2"]
    assert main(["train", "--recipe", "repa-e-irepa", "--smoke", "--out", str(run), *tiny]) == 0
    assert (run / "samples" / "step_0000002.png").is_file()
    assert main(["sample", "--ckpt", str(run), "--num-samples", "4", "--sampler", "ode-euler", "--steps", "2",
                 "--out", str(tmp_path / "samples"), "--no-progress"]) == 0
    assert main(["export-vae", str(run), "--out", str(tmp_path / "vae")]) == 0
    assert AutoencoderKL.from_pretrained(str(tmp_path / "vae")).config.latent_channels == 4
    capsys.readouterr()
    # an unknown alignment of the family, named in a one-line error with the configuration exit code
    bad = ["train", "--recipe", "repa-e-vanilla", "--smoke", "--out", str(tmp_path / "x")]
    assert main(bad) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert "repa-e-irepa" in err and "Traceback" not in err
