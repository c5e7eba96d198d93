"""Sample from a trained diffusion model (not yet available: the training engine is being built)."""

import sys

if __name__ == "__main__":
    sys.exit("sample.py: sampling from a workdir is not yet implemented in this version of jaxdiff.")
