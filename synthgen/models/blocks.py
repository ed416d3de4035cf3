"""Convolution blocks shared by the pix2pix U-Net, the PatchGAN and the conditional VAE."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

UPSAMPLE_MODES = ("resize", "bilinear", "transpose")


def norm_layer(channels: int) -> nn.Module:
    """Instance norm with a learned scale and shift.

    Why not BatchNorm (the reference pix2pix default): under Ray data parallelism each worker holds
    1-4 images, so batch statistics are per-worker noise and, without SyncBatchNorm, differ between
    workers, which is a known way for the reference pix2pix to train badly under DDP. Instance norm
    normalises each image on its own, so it is identical at any batch size or worker count and needs
    no cross-worker synchronisation; it is also what pix2pix uses at batch size 1.
    """
    return nn.InstanceNorm2d(channels, affine=True)


def down_block(in_channels: int, out_channels: int, *, act: bool = True, norm: bool = True) -> nn.Sequential:
    """LeakyReLU(0.2) -> 4x4 stride-2 conv -> norm: halves H and W.

    The activation comes first (as in pix2pix) so that the skip connection carries the pre-activation
    features. It is not in-place: the reference's in-place LeakyReLU silently rewrites the tensor that
    the skip connection also reads.
    """
    layers: list[nn.Module] = []
    if act:
        layers.append(nn.LeakyReLU(0.2))
    # A conv followed by an affine norm needs no bias: the norm's shift replaces it.
    layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=not norm))
    if norm:
        layers.append(norm_layer(out_channels))
    return nn.Sequential(*layers)


def up_block(in_channels: int, out_channels: int, upsample: str = "resize", bias: bool = False) -> nn.Sequential:
    """Doubles H and W: 'resize' = nearest x2 upsample + 3x3 conv (no checkerboard artefacts, Odena et
    al. 2016); 'bilinear' = the same with bilinear upsampling; 'transpose' = ConvTranspose2d(4, 2, 1)
    as in the reference pix2pix.

    Why 'bilinear' exists: after ~750 steps on 5 ISBI pairs, 'resize' and 'transpose' generators both
    paint a fine periodic grid into flat regions (nearest copies leave 2x2 blocks that the 3x3 conv
    does not fully smooth, level after level); bilinear upsampling leaves none."""
    if upsample in ("resize", "bilinear"):
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest") if upsample == "resize"
            else nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias),
        )
    if upsample == "transpose":
        return nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)
        )
    raise ValueError(f"unknown upsample mode '{upsample}' (known: {', '.join(UPSAMPLE_MODES)})")


def unet_depth(image_size: int, max_depth: int = 8, min_bottleneck: int = 1) -> int:
    """Largest d <= max_depth with image_size divisible by 2**d and image_size // 2**d >= min_bottleneck.

    256 -> 8 (1x1 bottleneck, the pix2pix U-Net), 32 -> 5, 48 -> 4 (3x3 bottleneck).
    """
    if image_size < 2 * min_bottleneck or image_size % 2:
        raise ValueError(f"image_size {image_size} cannot be halved even once down to >= {min_bottleneck} px")
    depth = 0
    while (
        depth < max_depth
        and image_size % 2 ** (depth + 1) == 0
        and image_size // 2 ** (depth + 1) >= min_bottleneck
    ):
        depth += 1
    return depth


def check_input_size(x: torch.Tensor, depth: int, name: str) -> None:
    """A net that halves the input `depth` times needs H and W divisible by 2**depth."""
    h, w = x.shape[-2:]
    if h % 2**depth or w % 2**depth:
        raise ValueError(f"{name}: input of {h}x{w} px; this network halves it {depth} times, so H and W "
                         f"must be multiples of {2**depth}")


class AttentionGate(nn.Module):
    """Additive attention gate on a U-Net skip connection (Oktay et al. 2018, Attention U-Net).

    alpha = sigmoid(psi(relu(W_s * skip + W_g * gate))) per pixel, and the skip is passed on as
    skip * alpha, so the decoder can suppress skip features outside the structures the coarser level
    points at. The gating signal here is the decoder's own output at the skip's resolution (already
    upsampled), which keeps every tensor at one size; the paper gates at the coarser size and
    upsamples alpha.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.skip_proj = nn.Conv2d(skip_channels, inter_channels, kernel_size=1, bias=False)
        self.gate_proj = nn.Conv2d(gate_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = nn.Conv2d(inter_channels, 1, kernel_size=1, bias=True)

    def attention(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) coefficients in (0, 1)."""
        return torch.sigmoid(self.psi(torch.relu(self.skip_proj(skip) + self.gate_proj(gate))))

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.attention(skip, gate)


def run_block(block: nn.Module, *inputs: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
    """block(*inputs), or the same under activation (gradient) checkpointing: its activations are
    recomputed in the backward pass instead of kept, trading ~30% more compute for memory. The RNG
    state is replayed, so dropout gives the same result and the same gradients either way."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)
