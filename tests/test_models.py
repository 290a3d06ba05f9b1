import pytest
import torch

from irepa.models import create_model, list_models


@pytest.mark.parametrize(
    "name,millions", [("SiT-XL/2", 675.13), ("SiT-B/2", 130.5), ("SiT-L/2", 458.1), ("SiT-S/2", 33.0)]
)
def test_parameter_counts_match_dit(name, millions):
    with torch.device("meta"):
        model = create_model(name)
    assert next(model.parameters()).device.type == "meta"
    # DiT counts its fixed position embedding and a learned-sigma output head; add them back.
    c = model.config
    dit_extra = (
        model.pos_embed.numel() + c.hidden_size * c.patch_size**2 * c.in_channels + c.patch_size**2 * c.in_channels
    )
    total = sum(p.numel() for p in model.parameters()) + dit_extra
    assert total / 1e6 == pytest.approx(millions, rel=2e-3)


def test_registry_names_and_errors():
    names = list_models()
    for size in ("S", "B", "L", "XL"):
        for patch in (1, 2, 4, 8):
            assert f"SiT-{size}/{patch}" in names
    with pytest.raises(ValueError, match="SiT-XL/2"):
        create_model("SiT-XXL/2")
    with pytest.raises(ValueError, match="unknown"):
        create_model("SiT-S/2", n_layers=3)


def test_forward_shapes_hidden_state_and_null_class():
    model = create_model("SiT-S/4", input_size=16, in_channels=3, num_classes=5, qk_norm=True)
    x = torch.randn(2, 3, 16, 16)
    t = torch.rand(2)
    y = torch.tensor([0, 5])  # 5 is the null class
    v = model(x, t, y)
    v2, hidden = model(x, t, y, return_hidden_at=3)
    assert v.shape == x.shape and hidden.shape == (2, 16, 384)
    torch.testing.assert_close(v, v2)
    with pytest.raises(ValueError, match="1..12"):
        model(x, t, y, return_hidden_at=13)


def test_hidden_state_is_the_output_of_block_k():
    model = create_model("SiT-S/2", input_size=8, in_channels=3, num_classes=3)
    for block in model.blocks:  # make blocks non-identity
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
    x, t, y = torch.randn(1, 3, 8, 8), torch.rand(1), torch.tensor([1])
    _, hidden = model(x, t, y, return_hidden_at=2)
    h = model.x_embedder(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    for block in model.blocks[:2]:
        h = block(h, c)
    torch.testing.assert_close(hidden, h)


def test_unpatchify_inverts_patchify():
    model = create_model("SiT-S/2", input_size=8, in_channels=4, num_classes=2)
    x = torch.randn(2, 4, 8, 8)
    p = 2
    patches = x.reshape(2, 4, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 4)
    torch.testing.assert_close(model.unpatchify(patches), x)


def test_sit_state_dict_keys_are_stable():
    """Checkpoints store these names; the shared building blocks must keep them (and no others)."""
    model = create_model("SiT-S/2", depth=1, input_size=8, num_classes=2, qk_norm=True)
    attn = ("qkv.weight", "qkv.bias", "q_norm.weight", "k_norm.weight", "proj.weight", "proj.bias")
    block = [f"attn.{n}" for n in attn]
    block += ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    block += ["adaLN_modulation.1.weight", "adaLN_modulation.1.bias"]
    expected = ["x_embedder.weight", "x_embedder.bias"]
    expected += [f"t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")]
    expected += ["y_embedder.weight"] + [f"blocks.0.{n}" for n in block]
    expected += [f"final_layer.{n}" for n in ("linear.weight", "linear.bias")]
    expected += ["final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"]
    assert list(model.state_dict()) == expected
