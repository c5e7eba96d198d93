"""A time-conditioned classifier of noised images: the U-Net's encoder half with a pooling
head, as the classifier of classifier guidance (Dhariwal & Nichol 2021, App. F:
"the downsampling trunk of the UNet with an attention pool at the 8x8 layer")."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.blocks import DownBlock, MidBlock
from jaxdiff.models.layers import GroupNorm
from jaxdiff.models.ops import Conv, Dense
from jaxdiff.models.unet import UNet


class NoisyClassifier(UNet):
    """log p(y | x_t) logits [B, num_outputs] of a noised image x_t at timestep t.

    All fields of :class:`~jaxdiff.models.unet.UNet` shape the trunk exactly as they shape a
    U-Net's down path and middle (so a preset's settings carry over); the head is GroupNorm,
    SiLU, global average pooling over the pixels and a linear layer to ``num_outputs``
    classes. ``num_classes`` (class conditioning of the trunk) stays None.

    Attributes:
      num_outputs: the number of logits.
      pool: "mean" (global average pooling, as ADM) or "flatten" (the lowest level's
        features at every position, for outputs that depend on where things are, e.g. the
        layout of a scene; the image size is then fixed by the parameters).
    """

    num_outputs: int = 10
    pool: str = "mean"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        labels: jax.Array | None = None,
        context: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Class logits [B, num_outputs] (float32)."""
        if self.num_outputs < 2:
            raise ValueError(f"NoisyClassifier needs num_outputs >= 2; got {self.num_outputs}.")
        if self.pool not in ("mean", "flatten"):
            raise ValueError(
                f"NoisyClassifier: pool must be 'mean' or 'flatten'; got {self.pool!r}."
            )
        n, spec = len(self.channels), self._spec()
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        nres = self.level_res_blocks()
        emb_act = self._embed(t, labels, x.shape[0])
        h = Conv(self.channels[0], name="conv_in", **kw)(x)
        for lv in range(n):
            heads = self.level_heads(lv) if lv in self.attention_levels else 0
            block = DownBlock(spec, self.channels[lv], nres[lv], heads, self.level_depth(lv),
                              downsample=lv < n - 1, name=f"down_blocks_{lv}")  # fmt: skip
            h, _ = block(h, emb_act, context, train)
        mid = MidBlock(
            spec, self.level_heads(n - 1) if self.mid_attention else 0, self.level_depth(n - 1),
            self.mid_attention_norm, self.mid_attention_groups, self.mid_scale, name="mid_block",
        )  # fmt: skip
        h = mid(h, emb_act, context, train)
        h = nn.silu(GroupNorm(self.norm_groups, self.norm_eps, self.param_dtype,
                              name="norm_out")(h))  # fmt: skip
        h = h.astype(jnp.float32)
        pooled = jnp.mean(h, axis=(1, 2)) if self.pool == "mean" else h.reshape(h.shape[0], -1)
        return Dense(self.num_outputs, name="head", **kw)(pooled).astype(jnp.float32)
