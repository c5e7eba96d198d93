"""Process set-up for the entry points: a persistent compilation cache and XLA CPU flags.

``configure()`` is what ``train.py`` and ``sample.py`` call before JAX starts its backend:

- a persistent compilation cache (``$JAXDIFF_CACHE_DIR``, default ``~/.cache/jaxdiff/xla``),
  so resuming a run or sampling again from the same workdir reuses compiled programs
  instead of paying the XLA compile (10-40 s) again; a ``JAX_COMPILATION_CACHE_DIR`` the
  user set wins;
- on the CPU backend, ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``:
  XLA's default (YNNPACK) convolution runs on one thread on these machines; the flag sends
  single convolutions to the multi-threaded Eigen path (the U-Net train step measured
  1.13-1.23x faster on 2 threads, benchmarks/README.md). XLA aborts the process at start-up
  on a flag it does not know, so the flag is only added for jaxlib versions where it was
  verified, only when the process will run on the CPU, and never when the user's
  ``XLA_FLAGS`` already set it (their value is kept).

Library code never calls this: importing jaxdiff changes nothing about the process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_VALUE = "-individual_convolution"
# jaxlib versions on which the flag above was verified to exist (XLA aborts on unknown flags).
YNN_VERIFIED = ("0.10.",)


def default_cache_dir(env: Mapping[str, str] | None = None) -> str:
    """``$JAXDIFF_CACHE_DIR``, else ``~/.cache/jaxdiff/xla``."""
    env = os.environ if env is None else env
    if env.get("JAXDIFF_CACHE_DIR"):
        return env["JAXDIFF_CACHE_DIR"]
    return os.path.join(os.path.expanduser("~"), ".cache", "jaxdiff", "xla")


def will_run_on_cpu(env: Mapping[str, str], gpu_plugin_installed: bool) -> bool:
    """Whether JAX will pick the CPU backend: ``JAX_PLATFORMS`` names only cpu, or it is
    unset and no accelerator plugin is installed."""
    platforms = env.get("JAX_PLATFORMS", env.get("JAX_PLATFORM_NAME", "")).strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not gpu_plugin_installed


def cpu_xla_flags(existing: str, *, jaxlib_version: str, on_cpu: bool) -> str | None:
    """The XLA_FLAGS value to use, or None to leave XLA_FLAGS as it is.

    Adds the YNN convolution flag when the process runs on the CPU, the jaxlib version is
    one it was verified on, and the user's flags do not mention it already.
    """
    if not on_cpu or not jaxlib_version.startswith(YNN_VERIFIED):
        return None
    if YNN_FLAG in existing:
        return None
    return f"{existing} {YNN_FLAG}={YNN_VALUE}".strip()


def _gpu_plugin_installed() -> bool:
    import importlib.metadata as md

    names = {d.metadata["Name"].lower() for d in md.distributions() if d.metadata["Name"]}
    return any(n.startswith(("jax-cuda", "jax_cuda", "jax-rocm", "libtpu")) for n in names)


def configure(*, compilation_cache: bool = True, cpu_flags: bool = True) -> dict[str, str]:
    """Set up this process for a jaxdiff run (call before the first JAX computation).

    Args:
      compilation_cache: turn on the persistent compilation cache.
      cpu_flags: add the verified XLA CPU flags (see the module docstring).

    Returns:
      What was set, for logging: {"compilation_cache": dir, "XLA_FLAGS": value}.
    """
    import jax
    import jaxlib

    done: dict[str, str] = {}
    if cpu_flags:
        on_cpu = will_run_on_cpu(os.environ, _gpu_plugin_installed())
        flags = cpu_xla_flags(
            os.environ.get("XLA_FLAGS", ""), jaxlib_version=jaxlib.__version__, on_cpu=on_cpu
        )
        if flags is not None:
            os.environ["XLA_FLAGS"] = flags
            done["XLA_FLAGS"] = flags
    if compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        cache = default_cache_dir()
        os.makedirs(cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache)
        done["compilation_cache"] = cache
    elif compilation_cache:
        done["compilation_cache"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    if compilation_cache:
        # Cache every compile that takes a noticeable time (JAX's default is 1 s).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return done
