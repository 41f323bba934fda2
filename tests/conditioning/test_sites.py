"""SiteState's fused operations compute exactly what the plain formulas say."""

import torch

from film_diffusion.conditioning import Site, SiteState

TOKENS = Site("b.norm", "norm", 8)
IMAGE = Site("r.gate", "gate", 8, layout="image")


def test_affine_and_gated_add_match_the_plain_formulas():
    g = torch.Generator().manual_seed(0)
    x, branch = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    scale, shift, gate1, gate2 = (torch.randn(2, 8, generator=g) for _ in range(4))
    state = SiteState()
    state.add_affine(TOKENS, scale, shift)
    gate_site = Site("b.gate", "gate", 8)
    state.add_gate(gate_site, gate1)
    torch.testing.assert_close(state.affine("b.norm", x), x * scale[:, None] + shift[:, None])
    torch.testing.assert_close(state.gated_add("b.gate", x, branch), x + gate1[:, None] * branch)
    state.add_gate(gate_site, gate2)
    torch.testing.assert_close(state.gated_add("b.gate", x, branch), x + gate1[:, None] * gate2[:, None] * branch)
    assert torch.equal(state.gated_add("nowhere", x, branch), x + branch)
    assert state.affine("nowhere", x) is x


def test_image_layout_broadcasts_per_channel():
    x, branch = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    gate = torch.randn(2, 8)
    state = SiteState()
    state.add_gate(IMAGE, gate)
    torch.testing.assert_close(state.gated_add("r.gate", x, branch), x + gate[:, :, None, None] * branch)


def test_sequence_and_channel_extensions():
    state = SiteState()
    seq = Site("tokens", "sequence", 4)
    x = torch.randn(2, 3, 4)
    extra, mask = torch.randn(2, 2, 4), torch.tensor([[True, False], [True, True]])
    assert state.extend_sequence("tokens", x) == (x, None)
    state.add_tokens(seq, extra, mask)
    out, key_mask = state.extend_sequence("tokens", x)
    assert torch.equal(out, torch.cat([x, extra], 1))
    assert key_mask.tolist() == [[True] * 3 + [True, False], [True] * 5]
    inp = Site("input", "input", 3, layout="image")
    state.add_channels(inp, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    image = torch.randn(2, 3, 4, 4)
    out = state.extend_channels("input", image)
    assert out.shape == (2, 5, 4, 4) and torch.equal(out[:, :3], image)
    assert torch.equal(out[1, 4], torch.full((4, 4), 4.0))
