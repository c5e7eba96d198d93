"""A frozen 'feature network' for the perceptual-loss tests, importable by name from configs
(``config.autoencoder.perceptual_fn = "vae_features:pool_features"``)."""

import jax


def pool_features(x: jax.Array) -> list[jax.Array]:
    """The image and its 2x2 means: [B, H, W, C] -> [[B, H, W, C], [B, H / 2, W / 2, C]]."""
    b, h, w, c = x.shape
    return [x, x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))]


NOT_CALLABLE = 3
