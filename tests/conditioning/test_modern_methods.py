"""adaLN-single (PixArt-alpha), joint attention (SD3's MMDiT) and gated cross-attention (Flamingo, Lumina-Next):
what each paper defines, checked against plain computations written here. (The method sweep, precision,
checkpointing, compile and DDP tests run them with every other method.)"""

import pytest
import torch
import torch.nn.functional as F
from factories import GATED, GATED_PER_HEAD, noisy_batch, randomize_, text_condition, tiny_model

from film_diffusion import DiT
from film_diffusion.errors import UserError
from film_diffusion.layers import unpatchify
from film_diffusion.studies.model_cost import parameter_counts

# -- adaLN-single ------------------------------------------------------------------------------------------------


def test_adaln_single_has_a_fifth_fewer_conditioning_parameters_than_adaln_zero_at_dit_s():
    """One generator for all blocks plus a table per block, against a generator per block (DiT-S/2's size)."""
    size = dict(sample_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6, cond_pooled_dim=16)
    zero = parameter_counts(DiT(conditioning="adaln_zero", **size))["params_conditioning"]
    single = parameter_counts(DiT(conditioning="adaln_single", **size))["params_conditioning"]
    c, e, depth, pooled = 384, 384, 12, 16 * 384 + 384
    modulated = depth * 6 * c + 2 * c  # (shift, scale, gate) x 2 per block, (shift, scale) for the final norm
    assert zero == (e + 1) * modulated + pooled
    assert single == (e + 1) * 8 * c + modulated + pooled  # one slot per role (4 in a block + the final norm)
    assert 1 - single / zero >= 0.2
    print(f"adaLN-single / adaLN-Zero conditioning parameters at DiT-S/2: {single} / {zero} = {single / zero:.3f}")


@pytest.mark.parametrize("route", ["native", "with_condition"])
def test_adaln_single_blocks_are_the_identity_at_init_and_it_carries_the_timestep(route):
    model = tiny_model("dit", ["adaln_single"], route)
    assert "timestep" not in model.conditioner.methods  # it takes the timestep in place of adaLN-Zero
    records = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: records.append((args[0], out[0])))
    sample, t = noisy_batch()
    model(sample, t, condition=text_condition())
    assert len(records) == model.config.depth and all(torch.equal(i, o) for i, o in records)


def test_adaln_single_is_a_shared_generator_of_the_timestep_plus_pooled_and_a_table_per_site():
    model = randomize_(tiny_model("dit", ["adaln_single"]))
    method = model.conditioner.methods["adaln_single"]
    t_emb = model.t_embedder(torch.tensor([10, 900]))
    signals = model.conditioner.signals(t_emb, text_condition())
    shared = F.linear(F.silu(t_emb + signals.pooled), method.generator.out.weight, method.generator.out.bias)
    c = model.config.hidden_size
    slots = dict(zip(["attn_norm", "attn_gate", "mlp_norm", "mlp_gate", "norm"],
                     shared.split([2 * c, c, 2 * c, c, 2 * c], dim=-1), strict=True))
    offset = 0
    for m in method.modulation(signals):
        size = 2 * c if m.site.kind == "norm" else c
        params = slots[m.site.name.rsplit(".", 1)[-1]] + method.table[offset:offset + size]
        offset += size
        if m.gate is not None:
            torch.testing.assert_close(m.gate, params)
        else:
            torch.testing.assert_close(torch.cat([m.shift, m.scale - 1], dim=-1), params)
    assert offset == method.table.numel()


def test_adaln_single_without_a_pooled_condition_carries_the_timestep_alone():
    """PixArt's own form: the caption enters through cross-attention, adaLN-single reads the timestep."""
    model = randomize_(tiny_model("dit", ["adaln_single", "cross_attention"], cond_pooled_dim=None))
    method = model.conditioner.methods["adaln_single"]
    assert not method.reads_pooled and model.conditioner.pooled_proj is None
    t_emb = model.t_embedder(torch.tensor([10, 10]))
    a, b = (method.modulation(model.conditioner.signals(t_emb, text_condition(seed=s))) for s in (0, 1))
    assert all(torch.equal(x.scale if x.gate is None else x.gate, y.scale if y.gate is None else y.gate)
               for x, y in zip(a, b, strict=True))
    with pytest.raises(UserError, match="No listed conditioning method reads the condition"):
        tiny_model("dit", ["adaln_single"], cond_pooled_dim=None)


def test_adaln_single_refusals_and_pixart_init():
    with pytest.raises(UserError, match="'adaln_single' shares one modulation among the sites of each role, but this "
                                        "backbone's 'norm' sites have widths 16, 32; use adaln_zero or film"):
        tiny_model("unet", ["adaln_single"])
    with pytest.raises(UserError, match="adaln_zero and adaln_single would each modulate every block"):
        tiny_model("dit", ["adaln_zero", "adaln_single"])
    model = tiny_model("dit", [{"name": "adaln_single", "zero_init": False}])  # PixArt's random tables
    method = model.conditioner.methods["adaln_single"]
    assert method.table.std().item() == pytest.approx(model.config.hidden_size**-0.5, rel=0.2)
    assert method.generator.out.weight.std().item() == pytest.approx(0.02, rel=0.2)
    sample, t = noisy_batch()
    x = model.pos_embed + model.x_embedder(sample)
    state = model.conditioner(model.t_embedder(t), text_condition())
    assert not torch.equal(model.blocks[0](x, state, None)[0], x)


# -- joint attention ---------------------------------------------------------------------------------------------


def _modulate(x, shift, scale):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def _attend(q, k, v, heads, key_mask):
    b, n, c = q.shape
    q, k, v = (z.view(b, z.shape[1], heads, c // heads).transpose(1, 2) for z in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
    return out.transpose(1, 2).reshape(b, n, c)


def mmdit_reference(model, sample, t, condition):
    """SD3's MMDiT written out for our DiT: the image stream modulated by the timestep's adaLN-Zero, the caption
    stream by the joint method's own generator of the timestep plus the pooled vector; one attention over both per
    block; the last block's caption stream gives keys and values only."""
    heads = model.config.num_heads
    joint, timestep = model.conditioner.methods["joint_attention"], model.conditioner.methods["timestep"]
    t_emb = model.t_embedder(t)
    image = timestep.generator(t_emb)  # per block: attn (shift, scale), attn gate, mlp (shift, scale), mlp gate
    text = joint.generator(t_emb + model.conditioner.pooled_proj(condition.pooled))  # SD3: timestep + pooled
    x = model.x_embedder(sample) + model.pos_embed
    s = joint.embed(condition.tokens) * condition.mask[..., None]
    key_mask = torch.cat([torch.ones(x.shape[:2], dtype=torch.bool), condition.mask], dim=1)
    n = x.shape[1]
    for i, (block, stream) in enumerate(zip(model.blocks, joint.streams, strict=True)):
        (shift, scale), gate = image[4 * i].chunk(2, -1), image[4 * i + 1]
        qx, kx, vx = block.attn.qkv(_modulate(x, shift, scale)).chunk(3, -1)
        last = i == len(model.blocks) - 1
        mod = text[i].chunk(2 if last else 6, -1)
        own = stream.qkv(_modulate(s, mod[0], mod[1])).chunk(2 if last else 3, -1)
        qs, (ks, vs) = (None, own) if last else (own[0], own[1:])
        q = qx if last else torch.cat([qx, qs], 1)
        out = _attend(q, torch.cat([kx, ks], 1), torch.cat([vx, vs], 1), heads, key_mask)
        x = x + gate[:, None] * block.attn.proj(out[:, :n])
        (shift, scale), gate = image[4 * i + 2].chunk(2, -1), image[4 * i + 3]
        x = x + gate[:, None] * block.mlp(_modulate(x, shift, scale))
        if not last:
            s = s + mod[2][:, None] * stream.proj(out[:, n:])
            s = s + mod[5][:, None] * stream.mlp(_modulate(s, mod[3], mod[4]))
    shift, scale = image[-1].chunk(2, -1)
    patches = model.final_layer.linear(_modulate(x, shift, scale))
    return unpatchify(patches, model.config.patch_size, model.out_channels, model.grid)


def test_joint_attention_is_sd3s_mmdit():
    model = randomize_(tiny_model("dit", ["joint_attention"])).eval()
    sample, t = noisy_batch()
    condition = text_condition()
    with torch.no_grad():
        torch.testing.assert_close(model(sample, t, condition=condition).sample,
                                   mmdit_reference(model, sample, t, condition), rtol=1e-4, atol=1e-5)
    last = model.conditioner.methods["joint_attention"].streams[-1]
    assert last.qkv.out_features == 2 * model.config.hidden_size and not hasattr(last, "mlp")


def test_joint_attention_reads_the_caption_from_the_first_step():
    """Unlike the gated and zero-initialised methods, the caption's keys and values reach the block's attention at
    init (a block's output shows it once the image stream's own gate opens: adaLN-Zero starts it at zero)."""
    model = tiny_model("dit", ["joint_attention"])
    x = torch.randn(2, model.grid**2, model.config.hidden_size)
    outputs = []
    for seed in (0, 1):
        state = model.conditioner(model.t_embedder(torch.tensor([3, 3])), text_condition(seed=seed))
        block = model.blocks[0]
        outputs.append(state.joint_attention(block.site_joint, block.attn, x, None, state.stream)[0])
    assert not torch.allclose(*outputs)


@pytest.mark.parametrize("backbone", ["unet", "dit_ffnified"])
def test_joint_attention_needs_a_transformer_with_self_attention(backbone):
    with pytest.raises(UserError, match=r"'joint_attention' found no joint \(a transformer block's self-attention\) "
                                        "site in this backbone"):
        tiny_model(backbone, ["joint_attention"])


@pytest.mark.parametrize("methods", [["adaln_single"], ["joint_attention"], ["joint_attention", "adaln_zero"]])
def test_class_labels_reach_the_new_dit_methods(methods):
    model = randomize_(tiny_model("dit", methods, num_classes=5, cond_token_dim=None, cond_pooled_dim=None))
    sample, t = noisy_batch()
    with torch.no_grad():
        a = model(sample, t, class_labels=torch.tensor([1, 5])).sample
        b = model(sample, t, class_labels=torch.tensor([2, 0])).sample
    assert not torch.allclose(a, b)


# -- gated cross-attention ---------------------------------------------------------------------------------------


def cross_attention_updates(model, condition):
    """Every cross-attention site's update for random features at timestep 7."""
    state = model.conditioner(model.t_embedder(torch.tensor([7, 7])), condition)
    g = torch.Generator().manual_seed(3)
    updates = []
    for site in model.conditioner.methods["cross_attention"].sites:
        x = torch.randn(2, 5, site.channels, generator=g)
        updates.append(state.residual(site.name, x) - x)
    return updates


@pytest.mark.parametrize("gate", [GATED, GATED_PER_HEAD], ids=lambda g: g["gate"])
@pytest.mark.parametrize("backbone", ["dit", "unet"])
def test_a_zero_gate_ignores_the_caption_yet_learns(backbone, gate):
    """At init, and with every other weight moved away from its init (the gate still 0), the model's output
    ignores the caption; the gate still gets a gradient, so a zero gate never blocks its own learning."""
    model = tiny_model(backbone, [gate])
    method = model.conditioner.methods["cross_attention"]
    assert all(torch.equal(u, torch.zeros_like(u)) for u in cross_attention_updates(model, text_condition()))
    assert all(p.weight.abs().sum() > 0 and p.bias is None for p in method.to_out)  # not a second zero factor
    randomize_(model)
    with torch.no_grad():
        for alpha in method.gates:
            alpha.zero_()
    sample, t = noisy_batch()
    out = model(sample, t, condition=text_condition(seed=0)).sample
    with torch.no_grad():
        other = model(sample, t, condition=text_condition(seed=1)).sample
    assert torch.equal(out, other)
    out.sub(sample).square().mean().backward()
    assert all(alpha.grad is not None and (alpha.grad != 0).all() for alpha in method.gates)
    with torch.no_grad():  # an open gate lets the caption in
        for alpha in method.gates:
            alpha.fill_(0.5)
        assert not torch.equal(model(sample, t, condition=text_condition(seed=0)).sample,
                               model(sample, t, condition=text_condition(seed=1)).sample)


def test_a_per_head_gate_scales_its_own_head():
    model = randomize_(tiny_model("dit", [GATED_PER_HEAD]))
    method = model.conditioner.methods["cross_attention"]
    heads = method.heads[0]
    assert all(alpha.shape == (heads,) for alpha in method.gates)
    with torch.no_grad():
        for alpha in method.gates:
            alpha.copy_(torch.tensor([1.0] + [0.0] * (heads - 1)))
        one_head = cross_attention_updates(model, text_condition())
        for alpha in method.gates:
            alpha.fill_(1.0)
        every_head = cross_attention_updates(model, text_condition())
    # an update is linear in the gated heads: with every gate equal, it is tanh(1) times the ungated update, and
    # with the other heads shut it lies in the span of the first head's block of the output projection
    for update, full, proj in zip(one_head, every_head, method.to_out, strict=True):
        width = proj.in_features // heads
        first = proj.weight[:, :width]
        coefficients = torch.linalg.lstsq(first, update.reshape(-1, proj.out_features).T).solution
        torch.testing.assert_close(first @ coefficients, update.reshape(-1, proj.out_features).T, atol=1e-5, rtol=0)
        assert not torch.allclose(update, full)


def test_gate_option_errors():
    with pytest.raises(UserError, match="a zero gate times a zero projection gets no gradient"):
        tiny_model("dit", [{**GATED, "zero_init": True}])
    with pytest.raises(UserError, match="cross_attention option gate='row' is unknown"):
        tiny_model("dit", [{"name": "cross_attention", "gate": "row"}])
