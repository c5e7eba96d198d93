"""Process set-up of the entry points: the XLA flag decision and the compilation cache."""

import os
import subprocess
import sys
import textwrap

import pytest

from jaxdiff import runtime

FLAG = f"{runtime.YNN_FLAG}={runtime.YNN_VALUE}"


@pytest.mark.parametrize(
    "existing, version, on_cpu, expected",
    [
        ("", "0.10.2", True, FLAG),
        ("--xla_force_host_platform_device_count=8", "0.10.2", True,
         f"--xla_force_host_platform_device_count=8 {FLAG}"),
        # the user's own value of the flag is kept, whatever it is
        (f"{runtime.YNN_FLAG}=none", "0.10.2", True, None),
        ("", "0.11.0", True, None),  # not verified on this jaxlib: XLA would abort if unknown
        ("", "0.9.2", True, None),
        ("", "0.10.2", False, None),  # GPU / TPU processes never get a CPU flag
    ],
)  # fmt: skip
def test_cpu_flag_decision(existing, version, on_cpu, expected):
    assert runtime.cpu_xla_flags(existing, jaxlib_version=version, on_cpu=on_cpu) == expected


@pytest.mark.parametrize(
    "env, plugin, expected",
    [
        ({"JAX_PLATFORMS": "cpu"}, True, True),
        ({"JAX_PLATFORMS": "cuda"}, False, False),
        ({"JAX_PLATFORMS": "cuda,cpu"}, True, False),
        ({}, True, False),
        ({}, False, True),
        ({"JAX_PLATFORM_NAME": "cpu"}, True, True),
    ],
)
def test_backend_guess(env, plugin, expected):
    assert runtime.will_run_on_cpu(env, plugin) is expected


def test_cache_dir_from_environment(tmp_path):
    assert runtime.default_cache_dir({"JAXDIFF_CACHE_DIR": str(tmp_path)}) == str(tmp_path)
    assert runtime.default_cache_dir({}).endswith(os.path.join(".cache", "jaxdiff", "xla"))


SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from jaxdiff import runtime

    done = runtime.configure()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    hits = []
    jax.monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None
    )
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() + jnp.cumsum(x).max())
    f(jnp.ones((8, 8))).block_until_ready()
    print("cache", done.get("compilation_cache"), "hits", len(hits))
    """
)


def test_second_process_start_hits_the_compilation_cache(tmp_path):
    env = dict(os.environ, JAXDIFF_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)

    def run():
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    first, second = run(), run()
    assert first[1] == str(tmp_path / "cache") and first[3] == "0"
    assert any((tmp_path / "cache").iterdir())
    assert int(second[3]) >= 1
