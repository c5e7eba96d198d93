"""Train a diffusion model (not yet available: the training engine is being built)."""

import sys

if __name__ == "__main__":
    sys.exit("train.py: training is not yet implemented in this version of jaxdiff.")
