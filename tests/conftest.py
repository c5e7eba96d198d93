"""Test set-up: every test sees 8 fake XLA CPU devices, so multi-device code is always tested.

The flag must be set before jax initialises its backend, hence at import time of conftest.
"""

import os

# 8 fake devices; and XLA's backend optimisation level 0: the tests compile hundreds of tiny
# programs, and O0 compiles them 3-4x faster with the same results (speed is measured in
# benchmarks/, never in tests).
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A datasets folder ($JAXDIFF_DATA_DIR) for a test file's in-process runs, shared by the
    files of one worker (each dataset is prepared once there)."""
    path = tmp_path_factory.getbasetemp() / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXDIFF_DATA_DIR", str(path))
        yield path
