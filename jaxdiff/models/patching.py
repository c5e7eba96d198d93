"""Denoising on patches folded into channels (space-to-depth), still in pixel space.

``Patched(unet, patch_size=p)`` runs a U-Net on ``x`` [B, H, W, C] rearranged to
[B, H / p, W / p, p * p * C] (each p x p patch of pixels becomes one position with p^2 C
channels) and unfolds its output the same way. The rearrangement is a permutation of the
pixels, exact and invertible, so the diffusion process, losses and samplers are unchanged and
still see pixels; only the network works at 1 / p the resolution (p^2 fewer positions, the
cost of convolutions and attention falling accordingly). This is the patching of pixel-space
transformers (DiT, U-ViT, "simple diffusion" of Hoogeboom et al. 2023, who use it with
U-Nets) applied to a U-Net; for small, low-detail images (the 32x32 digit scenes) it keeps
pixel-space quality at a fraction of the cost.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, H / p, W / p, p * p * C] (patch rows, patch columns, channels)."""
    b, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(f"Patched: image size {(h, w)} is not divisible by patch_size {p}.")
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
    """The inverse of :func:`space_to_depth`."""
    b, h, w, pc = x.shape
    c = pc // (p * p)
    x = x.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, c)


class Patched(nn.Module):
    """A U-Net run on ``patch_size`` x ``patch_size`` patches (see the module docstring).

    The inner U-Net sees ``patch_size**2`` times the image channels (its ``out_channels``, if
    set, counts them likewise). Same calling convention as `jaxdiff.models.UNet`; its
    parameters live under ``unet``.

    Attributes:
      unet: the inner U-Net module.
      patch_size: p >= 1 (1 runs the U-Net unchanged).
    """

    unet: nn.Module
    patch_size: int = 2

    def __post_init__(self):
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"Patched: patch_size must be an int >= 1, got {self.patch_size!r}.")
        super().__post_init__()

    @property
    def num_classes(self) -> int | None:
        """The inner U-Net's class count."""
        return self.unet.num_classes

    @property
    def context_dim(self) -> int | None:
        """The inner U-Net's cross-attention width."""
        return self.unet.context_dim

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, labels: Any = None, context: Any = None,
                 train: bool = False, **kwargs: Any) -> jax.Array:  # fmt: skip
        """The U-Net's output on the patches of x [B, H, W, C], unfolded to [B, H, W, C']."""
        p = self.patch_size
        out = self.unet(space_to_depth(x, p), t, labels=labels, context=context, train=train,
                        **kwargs)  # fmt: skip
        return depth_to_space(out, p)
