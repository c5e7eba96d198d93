"""Test set-up: every test sees 8 fake XLA CPU devices, so multi-device code is always tested.

The flag must be set before jax initialises its backend, hence at import time of conftest.
"""

import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
