"""Training engine: train state, pure train step, optimizer, EMA, sharding, checkpoints, loop."""

from jaxdiff.training.adversarial import (
    AdversarialTrainState,
    make_adversarial_init_fn,
    make_vae_gan_train_step,
)
from jaxdiff.training.checkpoint import Checkpointer, Restored, abstract_like, with_shardings
from jaxdiff.training.classifier_objective import classifier_log_prob, make_classifier_loss_fn
from jaxdiff.training.ema import ema_decay_schedule, ema_update
from jaxdiff.training.latent import LatentTrainState, make_latent_train_step
from jaxdiff.training.loop import LoopResult, NonFiniteLossError, train_loop
from jaxdiff.training.objective import make_diffusion_loss_fn
from jaxdiff.training.optim import make_lr_schedule, make_optimizer
from jaxdiff.training.sharding import (
    batch_sharding,
    global_batch,
    init_sharded_state,
    jit_train_step,
    make_mesh,
    pmap_train_step,
    replicate,
    replicated,
    split_for_pmap,
    state_shardings,
    unreplicate,
)
from jaxdiff.training.state import TrainState, create_train_state, make_init_fn
from jaxdiff.training.step import example_keys, make_train_step
from jaxdiff.training.text_conditioning import (
    CachedTextEncoder,
    FrozenTextEncoder,
    TextConditionedModel,
    TextConditioner,
    TokenizeCaptions,
    TrainedTextEncoder,
)
from jaxdiff.training.vae_objective import make_vae_loss_fn, make_vae_terms_fn

__all__ = [
    "CachedTextEncoder",
    "FrozenTextEncoder",
    "TextConditionedModel",
    "TextConditioner",
    "TokenizeCaptions",
    "TrainedTextEncoder",
    "LoopResult",
    "NonFiniteLossError",
    "train_loop",
    "Checkpointer",
    "Restored",
    "abstract_like",
    "with_shardings",
    "TrainState",
    "batch_sharding",
    "global_batch",
    "init_sharded_state",
    "jit_train_step",
    "make_mesh",
    "pmap_train_step",
    "replicate",
    "replicated",
    "split_for_pmap",
    "state_shardings",
    "unreplicate",
    "create_train_state",
    "ema_decay_schedule",
    "ema_update",
    "example_keys",
    "classifier_log_prob",
    "make_classifier_loss_fn",
    "make_diffusion_loss_fn",
    "make_init_fn",
    "make_lr_schedule",
    "make_optimizer",
    "make_train_step",
    # VAE training and latent diffusion (issue 12)
    "AdversarialTrainState",
    "LatentTrainState",
    "make_latent_train_step",
    "make_adversarial_init_fn",
    "make_vae_gan_train_step",
    "make_vae_loss_fn",
    "make_vae_terms_fn",
]
