"""JiT backbone: RoPE against a hand-written rotation, parameter count against the architecture's formula,
the hidden-state contract against a manual forward, dropout placement, adaLN-Zero identity and a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch

from irepa.errors import ConfigError
from irepa.models import create_model, list_models
from irepa.models.layers import Rope2d, apply_rope

TINY = dict(depth=4, hidden_size=64, num_heads=4, input_size=32, patch_size=8, bottleneck_dim=16, num_classes=10)


def _tiny(**overrides):
    return create_model("JiT-B/16", **{**TINY, "in_context_start": 2, "in_context_len": 3, **overrides})


def _randomise_modulation(model, std=0.05):
    """Non-zero adaLN and output weights, so blocks and the head are no longer identities / zero."""
    for block in model.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=std)
        torch.nn.init.normal_(block.adaLN_modulation[-1].bias, std=std)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=std)
    torch.nn.init.normal_(model.final_layer.adaLN_modulation[-1].weight, std=std)


# --- RoPE ------------------------------------------------------------------------------------------


def test_rope_is_an_explicit_rotation_of_channel_pairs_and_skips_prefix_tokens():
    head_dim, (rows, cols), prefix, theta = 8, (3, 4), 2, 10000.0
    rope = Rope2d(head_dim, (rows, cols), theta=theta)
    x = torch.randn(2, 3, prefix + rows * cols, head_dim, dtype=torch.float64)
    out = apply_rope(x, tuple(tb.double() for tb in rope(prefix)))

    # Reference: token n >= prefix sits at (r, c) = divmod(n - prefix, cols). In the first half of the
    # channels, pair (2j, 2j+1) turns by r * theta^(-4j/head_dim); in the second half by c * theta^(-4j/head_dim).
    expected = x.clone()
    half = head_dim // 2
    for n in range(prefix, prefix + rows * cols):
        r, c = divmod(n - prefix, cols)
        for offset, pos in ((0, r), (half, c)):
            for j in range(half // 2):
                angle = pos * theta ** (-4 * j / head_dim)
                a, b = x[..., n, offset + 2 * j], x[..., n, offset + 2 * j + 1]
                expected[..., n, offset + 2 * j] = a * math.cos(angle) - b * math.sin(angle)
                expected[..., n, offset + 2 * j + 1] = a * math.sin(angle) + b * math.cos(angle)
    assert torch.equal(out[..., :prefix, :], x[..., :prefix, :])  # in-context tokens: identity, exactly
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(out[..., prefix + 5, :], x[..., prefix + 5, :])  # image tokens do move


def test_rope_preserves_norms_and_scores_depend_only_on_relative_position():
    head_dim, grid = 16, (6, 6)
    rope = tuple(tb.double() for tb in Rope2d(head_dim, grid)())
    q, k = torch.randn(head_dim, dtype=torch.float64), torch.randn(head_dim, dtype=torch.float64)
    tokens = grid[0] * grid[1]
    rq, rk = apply_rope(q.expand(tokens, -1), rope), apply_rope(k.expand(tokens, -1), rope)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(tokens))

    def score(qpos: tuple[int, int], kpos: tuple[int, int]) -> torch.Tensor:
        return rq[qpos[0] * grid[1] + qpos[1]] @ rk[kpos[0] * grid[1] + kpos[1]]

    for (qr, qc), (kr, kc) in [((0, 0), (1, 2)), ((2, 1), (0, 3)), ((1, 1), (1, 1))]:
        for dr, dc in [(1, 0), (0, 2), (3, 2)]:
            torch.testing.assert_close(score((qr, qc), (kr, kc)), score((qr + dr, qc + dc), (kr + dr, kc + dc)))
    # ... and they do depend on the offset, along each axis.
    assert not torch.isclose(score((0, 0), (0, 0)), score((0, 0), (1, 0)))
    assert not torch.isclose(score((0, 0), (0, 0)), score((0, 0), (0, 1)))


# --- sizes and registry ----------------------------------------------------------------------------


def jit_parameter_count(depth, hidden, heads, patch, bottleneck, in_context_len=32, channels=3, classes=1000):
    """JiT's parameters by hand (fixed sin-cos positions and RoPE tables are buffers, not counted)."""

    def linear(fan_in: int, fan_out: int) -> int:
        return fan_in * fan_out + fan_out

    head_dim, swiglu = hidden // heads, int(int(4 * hidden) * 2 / 3)
    patch_embed = channels * patch * patch * bottleneck + linear(bottleneck, hidden)  # no bias, then 1x1 conv
    conditioning = linear(256, hidden) + linear(hidden, hidden) + (classes + 1) * hidden
    in_context = in_context_len * hidden
    attention = linear(hidden, 3 * hidden) + 2 * head_dim + linear(hidden, hidden)  # qkv, q/k RMSNorm gains, proj
    block = 2 * hidden + attention + linear(hidden, 2 * swiglu) + linear(swiglu, hidden) + linear(hidden, 6 * hidden)
    final = hidden + linear(hidden, patch * patch * channels) + linear(hidden, 2 * hidden)
    return patch_embed + conditioning + in_context + depth * block + final


@pytest.mark.parametrize(
    "name,arch,paper_millions",  # paper: JiT Table "#params" (it counts the frozen sin-cos positions too)
    [
        ("JiT-B/16", (12, 768, 12, 16, 128), 131),
        ("JiT-L/16", (24, 1024, 16, 16, 128), 459),
        ("JiT-H/16", (32, 1280, 16, 16, 256), 953),
    ],
)
def test_parameter_count_matches_formula(name, arch, paper_millions):
    with torch.device("meta"):
        model = create_model(name)
    assert next(model.parameters()).device.type == "meta"
    count = sum(p.numel() for p in model.parameters())
    assert count == jit_parameter_count(*arch)
    assert (count + model.pos_embed.numel()) / 1e6 == pytest.approx(paper_millions, abs=0.5)


def test_registry_names_overrides_and_errors():
    for size in ("B", "L", "H"):
        for patch in (16, 32):
            assert f"JiT-{size}/{patch}" in list_models()
    model = create_model("JiT-L/32", depth=2, hidden_size=64, num_heads=4, input_size=64, num_classes=7)
    assert len(model.blocks) == 2 and model.grid == (2, 2) and model.num_classes == 7 and model.hidden_size == 64
    assert model.config.in_context_start == 8 and model.config.bottleneck_dim == 128
    with pytest.raises(ValueError, match="unknown JiT-B/16 option"):
        create_model("JiT-B/16", qk_norm=False)
    with pytest.raises(ConfigError, match="divisible by 4"):
        create_model("JiT-B/16", hidden_size=72, num_heads=12)  # head dim 6
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        create_model("JiT-B/16", input_size=40)


@pytest.mark.parametrize("name,input_size", [("JiT-B/16", 64), ("JiT-B/32", 64), ("JiT-B/16", (32, 64))])
def test_output_has_the_input_shape(name, input_size):
    model = create_model(name, depth=2, hidden_size=64, num_heads=4, input_size=input_size, in_context_start=1)
    _randomise_modulation(model)
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    x = torch.randn(2, 3, h, w)
    out = model(x, torch.rand(2), torch.tensor([3, 1000]))
    assert out.shape == x.shape and out.abs().sum() > 0


# --- forward contract ------------------------------------------------------------------------------


def _manual_forward(model, x, t, y):
    """JiT written out: patches -> low-rank map -> +positions; class tokens before block in_context_start."""
    p, (gh, gw), start, length = model.config.patch_size, model.grid, model.config.in_context_start, 3
    patches = x.reshape(x.shape[0], 3, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], gh * gw, -1)
    reduce_w = model.x_embedder.reduce.weight.reshape(model.config.bottleneck_dim, -1)
    expand = model.x_embedder.expand
    h = patches @ reduce_w.T @ expand.weight.flatten(1).T + expand.bias + model.pos_embed
    y_emb = model.y_embedder(y)
    c = model.t_embedder(t) + y_emb
    image_tokens_after = []
    rope = model.rope()
    for i, block in enumerate(model.blocks):
        if i == start:
            h = torch.cat([y_emb[:, None, :].expand(-1, length, -1) + model.in_context_pos, h], dim=1)
            rope = model.rope(length)
        h = block(h, c, rope)
        image_tokens_after.append(h[:, length:] if i >= start else h)
    return image_tokens_after


def test_hidden_state_is_the_image_tokens_after_block_k():
    torch.manual_seed(0)
    model = _tiny().eval()
    _randomise_modulation(model)
    x, t, y = torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([4, 10])
    expected = _manual_forward(model, x, t, y)
    out = model(x, t, y)
    for k in range(1, 5):  # blocks 1-2 see image tokens only, 3-4 also the class tokens
        out_k, hidden = model(x, t, y, return_hidden_at=k)
        assert hidden.shape == (2, 16, 64)
        torch.testing.assert_close(hidden, expected[k - 1])
        torch.testing.assert_close(out_k, out)
    final = model.final_layer(expected[-1], model.t_embedder(t) + model.y_embedder(y))
    torch.testing.assert_close(out, model.unpatchify(final))
    with pytest.raises(ValueError, match="1..4"):
        model(x, t, y, return_hidden_at=5)


def test_in_context_tokens_condition_the_image_tokens():
    torch.manual_seed(0)
    model = _tiny().eval()
    _randomise_modulation(model, std=0.2)
    x, t, y = torch.randn(1, 3, 32, 32), torch.rand(1), torch.tensor([2])
    _, before = model(x, t, y, return_hidden_at=4)
    with torch.no_grad():
        model.in_context_pos.add_(1.0)
    _, after = model(x, t, y, return_hidden_at=4)
    assert not torch.allclose(before, after)


def test_dropout_is_only_in_the_middle_half_of_the_blocks():
    for attn_p, proj_p in [(0.5, 0.0), (0.0, 0.5)]:
        torch.manual_seed(0)
        model = _tiny(depth=8, attn_dropout=attn_p, proj_dropout=proj_p)
        _randomise_modulation(model, std=0.2)
        h, c = torch.randn(2, 16, 64), torch.randn(2, 64)
        rope = model.rope()
        stochastic = []
        for i, block in enumerate(model.blocks):
            block.train()
            if not torch.equal(block(h, c, rope), block(h, c, rope)):
                stochastic.append(i)
            block.eval()
            assert torch.equal(block(h, c, rope), block(h, c, rope))
        assert stochastic == [2, 3, 4, 5]  # depth 8: blocks depth/4 .. 3*depth/4 - 1


def test_adaln_zero_blocks_are_identities_at_init():
    torch.manual_seed(0)
    model = _tiny()
    c = torch.randn(2, 64)
    for i, block in enumerate(model.blocks):
        prefix = 3 if i >= model.config.in_context_start else 0
        h = torch.randn(2, prefix + 16, 64)
        assert torch.equal(block(h, c, model.rope(prefix)), h)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x, torch.rand(2), torch.tensor([0, 10])), torch.zeros_like(x))  # zero output head


def test_tiny_jit_overfits_one_batch_of_x_prediction():
    torch.manual_seed(0)
    model = _tiny(depth=2, in_context_start=1)
    clean = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    labels = torch.tensor([0, 1, 2, 3])
    t = torch.sigmoid(torch.randn(4) * 0.8 - 0.8)  # logit-normal, as JiT; t = 1 is clean in this test
    noisy = t.view(-1, 1, 1, 1) * clean + (1 - t.view(-1, 1, 1, 1)) * torch.randn_like(clean)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = (model(noisy, t, labels) - clean).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
