"""Train a diffusion model, a VAE, a noisy classifier, a CLIP or a super-resolution stage
from a config file (default: the embedded digits run).

  python train.py                                   # configs/default.py into workdirs/default
  python train.py --config=configs/cifar10_ddpm.py --workdir=workdirs/cifar10
  python train.py --config.optim.lr=1e-4 --config.train.num_steps=5000
  python train.py --config=configs/digits_vae.py --workdir=workdirs/digits_vae   # a VAE
  python train.py --config=configs/digits_classifier.py --workdir=workdirs/digits_classifier
  python train.py --config=configs/scenes_clip.py --workdir=workdirs/scenes_clip
  python train.py --config=configs/scenes_sr.py --workdir=workdirs/scenes_sr

A workdir that holds a checkpoint resumes from it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file(
    "config",
    os.path.join(_HERE, "configs", "default.py"),
    "Run configuration file.",
    lock_config=True,
)
flags.DEFINE_bool("compile_cache", True, "Persistent XLA compilation cache ($JAXDIFF_CACHE_DIR).")
flags.DEFINE_bool("cpu_flags", True, "Add jaxdiff's verified XLA CPU flags (jaxdiff.runtime).")
flags.DEFINE_string("workdir", "workdirs/default", "Directory for checkpoints, logs, samples.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    from jaxdiff import runtime

    runtime.configure(compilation_cache=flags.FLAGS.compile_cache, cpu_flags=flags.FLAGS.cpu_flags)
    from jaxdiff.experiment import train_and_evaluate

    out = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    if out["preempted"]:
        print(
            f"Stopped at step {out['step']} (signal); checkpoint saved in {out['workdir']}. "
            "Run the same command again to resume."
        )
    else:
        grids = flags.FLAGS.config.task in ("diffusion", "autoencoder", "super_resolution")
        where = " (samples in samples/)" if grids else ""
        print(f"Done: {out['step']} steps in {out['workdir']}{where}.")


if __name__ == "__main__":
    app.run(main)
