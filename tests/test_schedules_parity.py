"""Schedules and inference grids against diffusers 0.39.0 (fixtures: tests/fixtures/schedulers)."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.schedules import make_schedule

FIXTURE = Path(__file__).parent / "fixtures" / "schedulers" / "schedules.npz"
SAMPLER_OF = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_ancestral",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpm_solver",
    "UniPCMultistepScheduler": "unipc",
}
# Heun's defaults are Stable Diffusion's beta range (with the linear schedule).
HEUN_DEFAULTS = {"beta_start": 0.00085, "beta_end": 0.012}


@functools.cache
def load():
    z = np.load(FIXTURE)
    return z, json.loads(str(z["index"]))


def _cases(kind):
    return [pytest.param(i, id=c["key"]) for i, c in enumerate(load()[1]) if c["kind"] == kind]


def _ulps(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


@pytest.mark.parametrize("i", _cases("schedule"))
def test_alphas_cumprod_matches_diffusers(i):
    z, index = load()
    case = index[i]
    kw = dict(case["kwargs"])
    name = kw.pop("beta_schedule", "linear")
    s = make_schedule(name, **kw)
    ref = z[case["key"] + "/alphas_cumprod"]
    if kw.get("rescale_betas_zero_snr"):
        # torch's float32 sqrt is not correctly rounded (about 1 in 5 values is 1 ulp off),
        # and the rescale takes a square root and squares it again.
        np.testing.assert_allclose(np.asarray(s.alphas_cumprod), ref, rtol=3e-5, atol=1e-12)
        assert float(s.alphas_cumprod[-1]) == 0.0 == float(ref[-1])
    else:
        assert _ulps(s.alphas_cumprod, ref).max() <= 1, case["key"]
        # torch's vectorised float32 sigmoid differs from numpy's by a few ulp.
        beta_ulps = 4 if name == "sigmoid" else 1
        assert _ulps(s.betas, z[case["key"] + "/betas"]).max() <= beta_ulps, case["key"]


def _schedule_for(case):
    kw = dict(case["kwargs"])
    cfg = case.get("config") or {}
    name = kw.pop("beta_schedule", cfg.get("beta_schedule", "linear"))
    defaults = HEUN_DEFAULTS if case["reference"] == "HeunDiscreteScheduler" else {}
    start = kw.pop("beta_start", cfg.get("beta_start", defaults.get("beta_start", 0.0001)))
    end = kw.pop("beta_end", cfg.get("beta_end", defaults.get("beta_end", 0.02)))
    return make_schedule(name, beta_start=start, beta_end=end), kw


@pytest.mark.parametrize("i", _cases("grid"))
def test_inference_grid_matches_diffusers(i):
    z, index = load()
    case = index[i]
    schedule, kw = _schedule_for(case)
    name = SAMPLER_OF[case["reference"]]
    n = case["num_inference_steps"]
    if case["raises"] is not None:
        if case["raises"] == "ValueError":  # e.g. n > T, or PNDM's warm-up with n < 4
            with pytest.raises(ValueError):
                samplers.SamplingLoop(name, schedule=schedule, num_steps=n, **kw)
        else:  # diffusers crashes (Karras sigmas repeat the first cosine timestep); we run
            loop = samplers.SamplingLoop(name, schedule=schedule, num_steps=n, **kw)
            assert np.all(np.isfinite(loop.timesteps))
        return
    ref = z[case["key"] + "/timesteps"]
    index_based = name in ("ddpm", "ddim", "pndm")
    if n > schedule.num_train_timesteps or (index_based and ref.max() >= 1000):
        # Stricter than diffusers: more steps than training timesteps, or a steps_offset that
        # pushes a timestep past T - 1 (diffusers' step() would then fail to index it).
        with pytest.raises(ValueError, match="num_steps must be in|outside"):
            samplers.SamplingLoop(name, schedule=schedule, num_steps=n, **kw)
        return
    multistep_repeat = name in ("dpm_solver", "unipc") and not kw.get("use_karras_sigmas")
    if multistep_repeat and (np.any(np.diff(ref) >= 0) or ref.max() >= 1000):
        # diffusers' grid repeats a timestep here, or puts one past T - 1 where its sigma
        # equals the neighbour's (h = 0: its solvers return NaN); jaxdiff refuses these.
        with pytest.raises(ValueError, match="repeated timesteps"):
            samplers.SamplingLoop(name, schedule=schedule, num_steps=n, **kw)
        return
    loop = samplers.SamplingLoop(name, schedule=schedule, num_steps=n, **kw)
    got = loop.timesteps
    bogus_point = len(np.arange(1000, 0, -1000 / n)) > n  # diffusers' trailing t = -1 point
    karras_from_grid = name in ("euler", "heun") and kw.get("use_karras_sigmas")
    if karras_from_grid and kw["timestep_spacing"] == "trailing" and bogus_point:
        # Euler/Heun take their Karras range from the grid's ends, and diffusers' grid ends at
        # t = -1 here; jaxdiff's ends at the last real point, so the grids differ by design.
        assert len(got) == loop.num_model_calls and np.all(np.diff(got) <= 0)
        return
    truncated = len(ref) != len(got)
    if truncated:
        # diffusers' trailing grid gets extra t = -1 points for some N; jaxdiff keeps N.
        extra = len(ref) - len(got)
        assert kw["timestep_spacing"] == "trailing" and extra in (1, 2), case["key"]
        assert np.all(ref[-extra:] == -1)
        ref = ref[: len(got)]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-3, err_msg=case["key"])
    if name == "euler" and case["has_sigmas"] and not truncated:
        sig = loop.sigmas
        np.testing.assert_allclose(sig, z[case["key"] + "/sigmas"], rtol=1e-6)
    if case.get("init_noise_sigma") is not None:
        np.testing.assert_allclose(loop.init_noise_sigma, case["init_noise_sigma"], rtol=1e-6)
