"""Learned-range variance (Nichol & Dhariwal 2021): the hybrid loss against a float64 numpy
implementation written here from the papers' formulas, its wiring into the training objective,
and the DDPM sampler's use of the same variance parameterisation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import diffusion, losses
from jaxdiff.schedules import make_schedule
from jaxdiff.training import make_diffusion_loss_fn

_phi = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)))  # standard normal CDF


def reference_terms(ac, t, x0, noise, mean_out, v, prediction_type):
    """(L_simple, L_t in bits per dimension) per example, float64, from the papers.

    Ho et al. 2020, eq. 6-7: q(x_{t-1} | x_t, x_0) = N(mu~, beta~) with
    mu~ = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t,
    beta~ = (1 - ab_{t-1}) / (1 - ab_t) beta_t. Nichol & Dhariwal 2021, eq. 15: the model's
    variance exp(f log beta_t + (1 - f) log beta~_t) with f = (v + 1) / 2, beta~ at the first
    step (0) replaced by its value at the second; its mean is mu~ with x_0 predicted. L_t is
    the KL of the two Gaussians, and at the first step the discretised decoder NLL (Ho et al.
    2020, eq. 13: bins of width 2/255, edge bins open).
    """
    ac = np.asarray(ac, np.float64)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    beta = 1.0 - ac / ac_prev
    post_var = (1.0 - ac_prev) / (1.0 - ac) * beta
    post_var[0] = post_var[1]
    simple, vb = [], []
    for b, i in enumerate(t):
        a, s = math.sqrt(ac[i]), math.sqrt(1.0 - ac[i])
        xt = a * x0[b] + s * noise[b]
        out = mean_out[b]
        if prediction_type == "epsilon":
            target, x0_hat = noise[b], (xt - s * out) / a
        elif prediction_type == "sample":
            target, x0_hat = x0[b], out
        else:
            target, x0_hat = a * noise[b] - s * x0[b], a * xt - s * out
        simple.append(np.mean((out - target) ** 2))
        c_x0 = math.sqrt(ac_prev[i]) * beta[i] / (1.0 - ac[i])
        c_xt = math.sqrt(1.0 - beta[i]) * (1.0 - ac_prev[i]) / (1.0 - ac[i])
        mu_q, mu_p = c_x0 * x0[b] + c_xt * xt, c_x0 * x0_hat + c_xt * xt
        f = (v[b] + 1.0) / 2.0
        var_p = np.exp(f * np.log(beta[i]) + (1.0 - f) * np.log(post_var[i]))
        if i == 0:
            std, x = np.sqrt(var_p), x0[b]
            upper, lower = _phi((x + 1 / 255 - mu_p) / std), _phi((x - 1 / 255 - mu_p) / std)
            p = np.where(x < -0.999, upper, np.where(x > 0.999, 1.0 - lower, upper - lower))
            vb.append(-np.mean(np.log(p)) / math.log(2.0))
        else:
            var_q = post_var[i]
            kl = 0.5 * (np.log(var_p / var_q) + var_q / var_p + (mu_q - mu_p) ** 2 / var_p - 1)
            vb.append(np.mean(kl) / math.log(2.0))
    return np.array(simple), np.array(vb)


def _case(prediction_type, seed=0):
    """Quantised data, noise, and a model output near the truth at t = 0, 1, 2, 300, 999."""
    schedule = make_schedule("linear", 1000)
    k = jax.random.split(jax.random.key(seed), 4)
    shape = (5, 4, 4, 2)
    x0 = np.round(np.asarray(jax.random.uniform(k[0], shape, minval=-1, maxval=1)) * 127.5)
    x0 = np.clip(x0 / 127.5, -1, 1)
    x0[:, 0, 0, 0] = [-1, 1, -1, 1, 1]  # the open edge bins
    noise = np.asarray(jax.random.normal(k[1], shape), np.float64)
    v = np.asarray(jax.random.uniform(k[2], shape, minval=-1, maxval=1), np.float64)
    t = np.array([0, 1, 2, 300, 999])
    ac = np.asarray(schedule.alphas_cumprod, np.float64)[t]
    a, s = np.sqrt(ac)[:, None, None, None], np.sqrt(1 - ac)[:, None, None, None]
    eps_hat = noise + 0.3 * np.asarray(jax.random.normal(k[3], shape))
    xt = a * x0 + s * noise
    x0_hat = (xt - s * eps_hat) / a
    out = {"epsilon": eps_hat, "sample": x0_hat, "v_prediction": a * eps_hat - s * x0_hat}
    return schedule, x0, noise, v, t, out[prediction_type]


@pytest.mark.parametrize("prediction_type", diffusion.PREDICTION_TYPES)
def test_hybrid_loss_matches_the_papers_formulas(prediction_type):
    schedule, x0, noise, v, t, out = _case(prediction_type)
    simple, vb = reference_terms(schedule.alphas_cumprod, t, x0, noise, out, v, prediction_type)
    want = simple + 0.001 * 1000 * vb
    both = jnp.asarray(np.concatenate([out, v], axis=-1), jnp.float32)
    got = losses.diffusion_loss(
        lambda x_t, time: both,
        jnp.asarray(x0, jnp.float32),
        jax.random.key(0),
        schedule=schedule,
        prediction_type=prediction_type,
        t=jnp.asarray(t, jnp.float32),
        noise=jnp.asarray(noise, jnp.float32),
        learned_variance=True,
    )
    assert got.shape == (5,)
    # The VLB term is a sizeable part of the loss at small t (so this compares both terms) ...
    assert np.all(0.001 * 1000 * vb[:3] > 0.5 * simple[:3])
    # ... and float32 agrees with float64 to 2e-4 (float32 beta_t = 1 - ab_t / ab_{t-1} at small t).
    np.testing.assert_allclose(got, want, rtol=2e-4)
    bits = losses.vlb_term(
        jnp.asarray(out, jnp.float32),
        jnp.asarray(v, jnp.float32),
        jnp.asarray(x0, jnp.float32),
        jnp.asarray(diffusion.q_sample(x0, noise, *_alpha_sigma(schedule, t)), jnp.float32),
        jnp.asarray(t),
        schedule=schedule,
        prediction_type=prediction_type,
    )
    np.testing.assert_allclose(bits, vb, rtol=2e-4)


def _alpha_sigma(schedule, t):
    ac = np.asarray(schedule.alphas_cumprod, np.float64)[t]
    return np.sqrt(ac), np.sqrt(1 - ac)


def _apply(variables, x, t, train=True, rngs=None):
    """A two-parameter 'network': prediction m * x, variance values v everywhere."""
    p = variables["params"]
    return jnp.concatenate([p["m"] * x, jnp.broadcast_to(p["v"], x.shape)], axis=-1)


def test_objective_trains_the_variance_through_the_vlb_term_only():
    schedule = make_schedule("linear", 1000)
    x0 = jax.random.uniform(jax.random.key(0), (8, 4, 4, 1), minval=-1, maxval=1)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(8))
    params = {"m": jnp.float32(0.3), "v": jnp.float32(0.2)}

    def loss_and_grad(vlb_weight):
        loss_fn = make_diffusion_loss_fn(
            _apply, schedule=schedule, learned_variance=True, vlb_weight=vlb_weight
        )
        mean_loss = lambda p: jnp.mean(loss_fn(p, {"image": x0}, keys, jax.random.key(2))[0])
        return jax.value_and_grad(mean_loss)(params)

    (l0, g0), (l1, g1), (l2, g2) = (loss_and_grad(w) for w in (0.0, 0.001, 0.002))
    assert float(g0["v"]) == 0.0 and abs(float(g1["v"])) > 0  # variance: VLB only
    np.testing.assert_allclose(g1["m"], g0["m"], rtol=1e-6)  # mean: L_simple only
    np.testing.assert_allclose(g2["v"], 2 * g1["v"], rtol=1e-5)
    assert float(l1) > float(l0)
    np.testing.assert_allclose(float(l2) - float(l0), 2 * (float(l1) - float(l0)), rtol=1e-4)


def test_learned_variance_is_refused_where_it_cannot_be_trained():
    linear = make_schedule("linear", 1000)
    with pytest.raises(ValueError, match="objective='diffusion'"):
        make_diffusion_loss_fn(
            _apply, schedule=jaxdiff.EDMSchedule(), objective="edm", learned_variance=True
        )
    zero_snr = make_schedule("linear", 1000, rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        make_diffusion_loss_fn(_apply, schedule=zero_snr, learned_variance=True)
    make_diffusion_loss_fn(
        _apply, schedule=zero_snr, prediction_type="v_prediction", learned_variance=True
    )
    # A variance output without learned_variance (the old silent mismatch) is named.
    loss_fn = make_diffusion_loss_fn(_apply, schedule=linear)
    keys = jax.random.split(jax.random.key(0), 2)
    params = {"m": jnp.float32(1.0), "v": jnp.float32(0.0)}
    with pytest.raises(ValueError, match="pass learned_variance=True"):
        loss_fn(params, {"image": jnp.zeros((2, 4, 4, 3))}, keys, jax.random.key(1))
    with pytest.raises(ValueError, match=r"expected \(2, 4, 4, 2\)"):
        losses.diffusion_loss(
            lambda x, t: x, jnp.zeros((2, 4, 4, 1)), jax.random.key(0), schedule=linear,
            learned_variance=True,
        )  # fmt: skip


@pytest.mark.parametrize("k", [10, 49])  # t = 39 and t = 0 on the 50-step grid
def test_ddpm_sampler_reads_the_variance_like_the_loss(k):
    """One learned_range DDPM step equals mu_theta + exp(log var_theta / 2) z of the formulas
    that the loss is checked against above (so trained models sample as they were trained)."""
    schedule = make_schedule("linear", 50, beta_start=0.001, beta_end=0.2)
    loop = jaxdiff.SamplingLoop(
        "ddpm", schedule=schedule, num_steps=50, variance_type="learned_range", clip_sample=False
    )
    keys = jax.random.split(jax.random.key(0), 4)
    shape = (3, 4, 4, 2)
    x_t, eps_hat, z = (jax.random.normal(kk, shape) for kk in keys[:3])
    v = jax.random.uniform(keys[3], shape, minval=-1, maxval=1)
    state = loop.init(x_t)
    state, x_in, t = loop.model_input(state, k, noise=z)
    state = loop.step(state, k, jnp.concatenate([eps_hat, v], -1), noise=z)
    got = np.asarray(loop.result(state))
    i = int(t[0])
    assert i == 49 - k
    ac = np.asarray(schedule.alphas_cumprod, np.float64)
    ac_prev = ac[i - 1] if i else 1.0
    beta = 1 - ac[i] / ac_prev
    x_t, eps_hat, z, v = (np.asarray(a, np.float64) for a in (x_t, eps_hat, z, v))
    x0_hat = (x_t - math.sqrt(1 - ac[i]) * eps_hat) / math.sqrt(ac[i])
    mean = (math.sqrt(ac_prev) * beta * x0_hat + math.sqrt(1 - beta) * (1 - ac_prev) * x_t) / (
        1 - ac[i]
    )
    if i == 0:  # no noise at the last step
        np.testing.assert_allclose(got, mean, rtol=1e-4, atol=1e-5)
        return
    f = (v + 1) / 2
    post_var = (1 - ac_prev) / (1 - ac[i]) * beta
    std = np.exp(0.5 * (f * np.log(beta) + (1 - f) * np.log(post_var)))
    np.testing.assert_allclose(got, mean + std * z, rtol=1e-4, atol=1e-5)
    other_v = jnp.concatenate([jnp.asarray(eps_hat), -jnp.asarray(v)], -1)
    other = np.asarray(loop.result(loop.step(loop.init(x_in), k, other_v, noise=z)))
    assert not np.allclose(other, got, rtol=1e-2)  # the variance values do change the step


def test_a_learned_range_config_trains_through_the_real_step_and_samples(tmp_path):
    from jaxdiff.experiment import base_config, load_workdir, train_and_evaluate
    from jaxdiff.experiment.from_config import init_params_fn

    config = base_config()  # the digits (8x8x1)
    config.data.data_dir = str(tmp_path / "data")
    config.data.global_batch_size = 16
    config.model.preset = "TINY"
    config.model.kwargs = {"out_channels": 2}  # prediction + variance values
    config.diffusion.learned_variance = True
    config.optim.warmup_steps = 1
    config.train.update(num_steps=4, log_every=2, save_every=2, sample_every=4, progress=False)
    config.sample.update(sampler="ddpm", num_steps=3, num_samples=4, options={})
    out = train_and_evaluate(config, str(tmp_path / "run"))  # NaN/inf losses would raise
    assert out["step"] == 4 and (tmp_path / "run" / "samples" / "step_4.png").exists()

    gen = load_workdir(str(tmp_path / "run"))
    assert gen.learned_variance and gen.image_shape == (8, 8, 1)
    k_init = jax.random.split(jax.random.key(config.seed))[0]
    init = init_params_fn(gen.model, gen.image_shape)(k_init)["conv_out"]["kernel"]
    trained = np.asarray(gen.params["conv_out"]["kernel"])
    assert trained.shape[-1] == 2
    # Both output channels trained: the variance one only gets gradients from the VLB term.
    assert not np.allclose(trained[..., 0], init[..., 0], atol=1e-6)
    assert not np.allclose(trained[..., 1], init[..., 1], atol=1e-6)
    args = dict(num_samples=4, sampler="ddpm", num_steps=3, progress=False)
    learned, labels = gen.sample(**args)  # variance_type="learned_range" by default
    fixed, _ = gen.sample(**args, options={"variance_type": "fixed_small"})
    assert learned.shape == (4, 8, 8, 1) and np.all(np.isfinite(learned))
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])
    assert not np.allclose(learned, fixed, atol=1e-3)
    with pytest.raises(ValueError, match="learned_variance=True needs objective='diffusion'"):
        config.diffusion.objective = "edm"
        train_and_evaluate(config, str(tmp_path / "edm"))


def test_the_adm_preset_needs_learned_variance_on_rgb_images():
    from jaxdiff.experiment.from_config import build_model

    adm = {"preset": "ADM_IMAGENET64", "dtype": "float32", "kwargs": {}}
    with pytest.raises(ValueError, match="outputs 6 channels for 3-channel images.*learned_varia"):
        build_model(adm, num_classes=1000, image_channels=3)
    assert build_model(adm, num_classes=1000, image_channels=3, learned_variance=True)
    with pytest.raises(ValueError, match="outputs 6 channels for 1-channel images; allowed: 2"):
        build_model(adm, num_classes=1000, image_channels=1, learned_variance=True)
