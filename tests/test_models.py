"""Shapes, determinism, rebuilding and a few optimisation steps of the model networks (tiny, CPU)."""
from __future__ import annotations

import pytest
import torch

from synthgen.config import Config
from synthgen.losses import kl_divergence, l1_loss, vae_reconstruction_loss
from synthgen.models import MODELS, build_from_config, build_models, init_weights
from synthgen.models.blocks import unet_depth, up_block
from synthgen.models.pix2pix import PatchDiscriminator, UNetGenerator
from synthgen.models.vae import ConditionalVAE


def _mask(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 1, size, size, generator=g) > 0.5).float()


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    "size,max_depth,min_bottleneck,expected",
    [(256, 8, 1, 8), (32, 8, 1, 5), (48, 8, 1, 4), (96, 8, 1, 5), (64, 8, 1, 6), (256, 6, 4, 6), (32, 6, 4, 3),
     (48, 6, 4, 3)],
)
def test_unet_depth(size: int, max_depth: int, min_bottleneck: int, expected: int) -> None:
    assert unet_depth(size, max_depth, min_bottleneck) == expected


def test_up_block_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="bicubic"):
        up_block(4, 4, "bicubic")


@pytest.mark.parametrize("upsample", ["resize", "bilinear", "transpose"])
@pytest.mark.parametrize("size,ngf", [(32, 4), (48, 4), (64, 4), (256, 8)])
def test_generator_shape_and_range(size: int, ngf: int, upsample: str) -> None:
    torch.manual_seed(0)
    g = UNetGenerator(in_channels=1, out_channels=3, image_size=size, ngf=ngf, upsample=upsample)
    out = g(_mask(2, size))
    assert out.shape == (2, 3, size, size)
    assert out.min() >= -1 and out.max() <= 1
    assert len(g.encoder) == len(g.decoder) == unet_depth(size)


def test_generator_dropout_only_in_three_innermost_levels() -> None:
    g = UNetGenerator(image_size=256, ngf=4)
    has_dropout = [any(isinstance(m, torch.nn.Dropout) for m in level.modules()) for level in g.decoder]
    assert has_dropout == [True, True, True, False, False, False, False, False]
    g = UNetGenerator(image_size=256, ngf=4, dropout=False)
    assert not any(isinstance(m, torch.nn.Dropout) for m in g.modules())


def test_generator_reference_size() -> None:
    # The 'transpose' variant is the reference pix2pix unet_256 architecture (~54.4M parameters).
    assert _n_params(UNetGenerator(upsample="transpose")) == 54_408_385
    assert _n_params(UNetGenerator()) == 39_153_985


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_patch_discriminator_shape(spectral_norm: bool) -> None:
    torch.manual_seed(0)
    d = PatchDiscriminator(in_channels=4, ndf=8, spectral_norm=spectral_norm)
    logits = d(torch.randn(2, 4, 256, 256))
    assert logits.shape == (2, 1, 30, 30)
    if spectral_norm:
        assert any("parametrizations" in name for name, _ in d.named_parameters())


def test_patch_discriminator_reference_size() -> None:
    assert _n_params(PatchDiscriminator(in_channels=2)) == 2_764_609


def test_vae_shapes() -> None:
    torch.manual_seed(0)
    vae = ConditionalVAE(image_channels=3, image_size=32, latent_dim=16, nf=8)
    image, mask = torch.rand(2, 3, 32, 32) * 2 - 1, _mask(2, 32)
    mu, logvar = vae.encode(image, mask)
    assert mu.shape == logvar.shape == (2, 16)
    recon, mu, logvar = vae(image, mask)
    assert recon.shape == (2, 3, 32, 32) and mu.shape == (2, 16)
    assert recon.min() >= -1 and recon.max() <= 1
    assert vae.decode(torch.randn(2, 16), mask).shape == (2, 3, 32, 32)


def test_vae_sample_mask_major_and_seeded() -> None:
    torch.manual_seed(0)
    vae = ConditionalVAE(image_channels=1, image_size=32, latent_dim=16, nf=8)
    masks = _mask(2, 32)
    masks[1] = 1 - masks[0]  # two clearly different masks
    with torch.no_grad():
        out = vae.sample(masks, num_samples=3, generator=torch.Generator().manual_seed(1))
        again = vae.sample(masks, num_samples=3, generator=torch.Generator().manual_seed(1))
        # Mask-major: rows 0-2 decode mask 0. Decoding the same z with mask 0 repeated reproduces them.
        z = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
        expected = vae.decode(z, masks.repeat_interleave(3, dim=0))
        swapped = vae.decode(z, masks[[1, 1, 1, 0, 0, 0]])
    assert out.shape == (6, 1, 32, 32)
    assert torch.equal(out, again)
    assert torch.allclose(out, expected)
    assert not torch.allclose(out, swapped)


@pytest.mark.parametrize("init", [False, True])
def test_vae_different_z_give_different_images(init: bool) -> None:
    torch.manual_seed(0)
    vae = ConditionalVAE(image_channels=1, image_size=32, latent_dim=32, nf=8)
    if init:
        init_weights(vae)
    with torch.no_grad():
        out = vae.sample(_mask(1, 32), num_samples=4, generator=torch.Generator().manual_seed(0))
    diffs = [(out[i] - out[j]).abs().mean().item() for i in range(4) for j in range(i + 1, 4)]
    spread = out.abs().mean().item()
    assert min(diffs) > 0.01, diffs
    assert min(diffs) > 0.1 * spread, (diffs, spread)  # differences are not negligible next to the output


@pytest.mark.parametrize("model", ["pix2pix", "vae"])
@pytest.mark.parametrize("channels", [1, 3])
def test_build_models(model: str, channels: int) -> None:
    cfg = Config()
    cfg.train.model, cfg.data.image_size = model, 32
    cfg.pix2pix.ngf = cfg.pix2pix.ndf = 4
    cfg.vae.nf, cfg.vae.latent_dim = 4, 8
    torch.manual_seed(0)
    nets = build_models(cfg, channels)
    mask = _mask(2, 32)
    if model == "pix2pix":
        assert set(nets) == {"generator", "discriminator"}
        fake = nets["generator"](mask)
        assert fake.shape == (2, channels, 32, 32)
        assert nets["discriminator"](torch.cat([mask, fake], dim=1)).shape[:2] == (2, 1)
        assert nets["discriminator"].config["in_channels"] == 1 + channels
    else:
        assert set(nets) == {"vae"}
        assert nets["vae"].sample(mask, 2).shape == (4, channels, 32, 32)
    assert set(MODELS) == {"pix2pix", "vae", "diffusion"}


def test_init_weights_statistics() -> None:
    torch.manual_seed(0)
    g = init_weights(UNetGenerator(image_size=64, ngf=16))
    conv = g.encoder[2][1].weight
    norm = g.encoder[2][2]
    assert abs(conv.mean().item()) < 0.002 and abs(conv.std().item() - 0.02) < 0.002
    assert abs(norm.weight.mean().item() - 1) < 0.01 and torch.all(norm.bias == 0)
    assert torch.all(g.encoder[0][0].bias == 0)
    d = init_weights(PatchDiscriminator(2, ndf=16, spectral_norm=True))
    assert abs(d.model[0].parametrizations.weight.original.std().item() - 0.02) < 0.005


@pytest.mark.parametrize(
    "kind,net",
    [
        ("generator", lambda: UNetGenerator(1, 3, image_size=48, ngf=4, upsample="transpose", dropout=False)),
        ("discriminator", lambda: PatchDiscriminator(4, ndf=4, n_layers=2, spectral_norm=True)),
        ("vae", lambda: ConditionalVAE(3, image_size=32, latent_dim=8, nf=4)),
    ],
)
def test_build_from_config_roundtrip(kind: str, net) -> None:
    torch.manual_seed(0)
    original = net()
    rebuilt = build_from_config(kind, dict(original.config))
    rebuilt.load_state_dict(original.state_dict(), strict=True)
    assert rebuilt.config == original.config
    assert _n_params(rebuilt) == _n_params(original)


def test_build_from_config_unknown_kind() -> None:
    with pytest.raises(ValueError, match="critic"):
        build_from_config("critic", {})


def test_generator_learns_one_pair() -> None:
    torch.manual_seed(0)
    g = init_weights(UNetGenerator(image_size=32, ngf=4, dropout=False))
    mask = _mask(1, 32)
    target = mask * 1.2 - 0.6  # a simple image the mask determines
    opt = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.5, 0.999))
    losses = []
    for _ in range(40):
        loss = l1_loss(g(mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Small N(0, 0.02) init at ngf=4 starts near 0 output, so progress is steady rather than fast.
    assert losses[-1] < 0.75 * losses[0], losses
    assert losses[-1] == min(losses), losses


def test_vae_learns_to_reconstruct() -> None:
    torch.manual_seed(0)
    vae = init_weights(ConditionalVAE(image_channels=1, image_size=32, latent_dim=8, nf=8))
    mask = _mask(2, 32)
    image = mask * 1.0 - 0.5 + 0.1 * torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)

    def recon_loss() -> float:
        with torch.no_grad():
            mu, _ = vae.encode(image, mask)
            return vae_reconstruction_loss(vae.decode(mu, mask), image).item()

    before = recon_loss()
    for _ in range(40):
        recon, mu, logvar = vae(image, mask)
        loss = vae_reconstruction_loss(recon, image) + kl_divergence(mu, logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = recon_loss()
    assert after < 0.6 * before, (before, after)


# ------------------------------------------------------------------ attention-gated U-Net
@pytest.mark.parametrize("size", [32, 48, 64])
def test_attention_unet_shapes_and_gates(size: int) -> None:
    g = UNetGenerator(1, 3, size, ngf=4, attention=True).eval()
    plain = UNetGenerator(1, 3, size, ngf=4)
    depth = unet_depth(size)
    assert len(g.gates) == depth - 1, "one gate per skip connection"
    assert g(_mask(2, size)).shape == (2, 3, size, size)
    assert _n_params(g) > _n_params(plain)
    # each gate maps (skip, decoder output) of one level to per-pixel coefficients in (0, 1)
    channels = [4 * min(2**i, 8) for i in range(depth)]
    for gate, level in zip(g.gates, reversed(range(depth - 1))):
        side = size // 2 ** (level + 1)
        skip = torch.randn(2, channels[level], side, side)
        alpha = gate.attention(skip, torch.randn(2, channels[level], side, side))
        assert alpha.shape == (2, 1, side, side) and bool(((alpha > 0) & (alpha < 1)).all())
        assert gate(skip, torch.randn_like(skip)).shape == skip.shape


def test_attention_unet_by_name_rebuilds_from_its_config() -> None:
    cfg = Config()
    cfg.data.image_size, cfg.pix2pix.ngf, cfg.pix2pix.generator = 32, 4, "attention_unet"
    nets = build_models(cfg, 1)
    assert nets["generator"].config["attention"] is True and nets["generator"].gates is not None
    rebuilt = build_from_config("generator", nets["generator"].config)
    rebuilt.load_state_dict(nets["generator"].state_dict())
    m = _mask(1, 32)
    assert torch.equal(rebuilt.eval()(m), nets["generator"].eval()(m))
    old = {k: v for k, v in nets["generator"].config.items() if k != "attention"}  # checkpoints before gates
    assert build_from_config("generator", old).gates is None
    cfg.pix2pix.generator = "transformer"
    with pytest.raises(Exception, match="pix2pix.generator"):
        cfg.validate()


# ------------------------------------------------------------------ gradient checkpointing
def _grads(net: torch.nn.Module, inputs: tuple, checkpointed: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    net.train()
    net.gradient_checkpointing = checkpointed
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # dropout / the VAE's eps draw the same numbers in both runs
    out = net(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    (out.float() ** 2).mean().backward()
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", [False, True])
def test_checkpointed_generator_gives_the_same_gradients(attention: bool) -> None:
    torch.manual_seed(0)
    g = init_weights(UNetGenerator(1, 1, 32, ngf=4, attention=attention))
    inputs = (_mask(2, 32),)
    plain, ckpt = _grads(g, inputs, False), _grads(g, inputs, True)
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(g.parameters()))
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)


def test_checkpointed_vae_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    vae = init_weights(ConditionalVAE(1, 32, latent_dim=8, nf=4))
    inputs = (torch.rand(2, 1, 32, 32) * 2 - 1, _mask(2, 32))
    plain, ckpt = _grads(vae, inputs, False), _grads(vae, inputs, True)
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7, msg=k)


def test_bilinear_upsampling_leaves_no_blocks_on_a_ramp() -> None:
    """'resize' copies each pixel into a 2x2 block (the source of the grid artefact); 'bilinear' keeps a
    ramp a ramp. Same weights either way: the modes differ only in the parameter-free upsampling."""
    ramp = torch.arange(16.0).repeat(16, 1)[None, None]  # rises by 1 per column
    blocks = {mode: up_block(1, 1, mode) for mode in ("resize", "bilinear")}
    blocks["bilinear"].load_state_dict(blocks["resize"].state_dict())
    for block in blocks.values():
        torch.nn.init.dirac_(block[1].weight)  # the conv passes its input through unchanged
    steps = {mode: torch.diff(block(ramp)[0, 0, 8, 2:-2]) for mode, block in blocks.items()}
    assert torch.allclose(steps["bilinear"], torch.full_like(steps["bilinear"], 0.5))
    assert set(steps["resize"].tolist()) == {0.0, 1.0}
