"""Text encoders loaded from transformers checkpoints give transformers' outputs.

Fixtures: tests/fixtures/text/generate.py (tiny random CLIP / T5 encoders saved by
transformers, references computed by its PyTorch models in float64). Tolerances: float32
max |jaxdiff - reference| <= 1e-4 x std(output); bfloat16 compute no worse than 2.5 x the
error of transformers' own bfloat16 run of the same model (recorded by the generator).
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdiff.models import (
    CLIPTextModelWithProjection,
    T5EncoderModel,
    export_text_encoder,
    load_text_encoder,
)
from jaxdiff.models.convert_text import read_state_dict

MODELS = os.path.join(os.path.dirname(__file__), "fixtures", "text", "models")
CASES = ["sd1", "sd2", "sdxl", "t5v11", "t5"]
SETS = ["prompts", "random"]
OUTPUTS = ["last_hidden_state", "hidden_states", "pooled_output", "text_embeds"]


def _io(case):
    return dict(np.load(os.path.join(MODELS, case, "io.npz")))


@functools.cache
def _loaded(case, dtype="float32"):
    return load_text_encoder(os.path.join(MODELS, case), dtype=jnp.dtype(dtype))


@functools.cache
def _outputs(case, set_name, dtype="float32"):
    module, params = _loaded(case, dtype)
    io = _io(case)
    mask = io.get(f"{set_name}/attention_mask")
    out = jax.jit(module.apply)({"params": params}, io[f"{set_name}/input_ids"], mask)
    got = {k: getattr(out, k) for k in OUTPUTS if getattr(out, k) is not None}
    got["hidden_states"] = jnp.stack(out.hidden_states)
    return {k: np.asarray(v.astype(jnp.float32), np.float64) for k, v in got.items()}


def _err(got, ref):
    assert got.shape == ref.shape
    return np.abs(got - ref).max() / ref.std()


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("case", CASES)
def test_float32_parity(case, set_name):
    io, got = _io(case), _outputs(case, set_name)
    compared = [k for k in OUTPUTS if f"{set_name}/{k}" in io]
    assert "last_hidden_state" in compared and "hidden_states" in compared
    for key in compared:
        err = _err(got[key], io[f"{set_name}/{key}"])
        assert err <= 1e-4, f"{case} {set_name} {key}: {err:.2e} x std"


@pytest.mark.parametrize("case", CASES)
def test_bfloat16_within_reference_bf16_error(case):
    module, _ = _loaded(case, "bfloat16")
    assert module.dtype == jnp.bfloat16
    io = _io(case)
    for set_name in SETS:
        got = _outputs(case, set_name, "bfloat16")
        for key in [k for k in got if f"{set_name}/{k}" in io]:
            err, torch_err = (
                _err(got[key], io[f"{set_name}/{key}"]),
                io[f"{set_name}/err_bf16/{key}"],
            )
            assert err <= 2.5 * torch_err, f"{case} {set_name} {key}: {err:.2e} vs {torch_err:.2e}"


def test_sd2_penultimate_hidden_state():
    """SD 2.x conditions on the penultimate layer ("clip skip"); it is not the last layer."""
    io, got = _io("sd2"), _outputs("sd2", "prompts")
    module, _ = _loaded("sd2")
    assert got["hidden_states"].shape[0] == module.num_hidden_layers + 1
    ref = io["prompts/hidden_states"]
    assert _err(got["hidden_states"][-2], ref[-2]) <= 1e-4
    assert _err(got["hidden_states"][-2], ref[-1]) > 0.1


@pytest.mark.parametrize(("case", "legacy"), [("sd1", True), ("sdxl", False)])
def test_pooling_position(case, legacy):
    """eos_token_id 2 pools at the largest id, any other at the first eos; the random ids hold
    ids above eos, so the two rules pick different tokens and the reference tells them apart."""
    module, _ = _loaded(case)
    io = _io(case)
    ids = io["random/input_ids"]
    assert (module.eos_token_id == 2) == legacy
    eos = module.vocab_size - 9  # the generator adds 8 ids above end-of-text
    first_eos, largest = np.argmax(ids == eos, axis=1), np.argmax(ids, axis=1)
    assert (first_eos != largest).all()
    want = largest if legacy else first_eos
    # For CLIPTextModelWithProjection the reference has text_embeds only: check ours instead.
    pooled = io.get("random/pooled_output", _outputs(case, "random")["pooled_output"])
    last = io["random/last_hidden_state"]
    rows = np.arange(len(ids))
    np.testing.assert_allclose(pooled, last[rows, want], rtol=0, atol=1e-4 * last.std())
    assert np.abs(last[rows, want] - last[rows, np.where(legacy, first_eos, largest)]).max() > 0.1


@pytest.mark.parametrize("case", CASES)
def test_export_round_trip_and_transformers_layout(case, tmp_path):
    module, params = _loaded(case)
    export_text_encoder(module, params, tmp_path)
    again, params2 = load_text_encoder(tmp_path)
    assert again == module
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    # Same keys and shapes as the file transformers wrote (CLIPTextModel: with the prefix).
    ours = load_file(os.path.join(tmp_path, "model.safetensors"))
    theirs, _ = read_state_dict(os.path.join(MODELS, case))
    if case == "sd2":
        theirs = {f"text_model.{k}": v for k, v in theirs.items()}
    # The zip .bin holds T5's tied token table under both names; save_pretrained writes one.
    theirs.pop("encoder.embed_tokens.weight", None)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    with open(os.path.join(MODELS, case, "config.json")) as f:
        ref_config = json.load(f)
    with open(os.path.join(tmp_path, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == ref_config["architectures"]
    for key, value in config.items():
        if key in ref_config and key not in ("architectures",):
            assert ref_config[key] == value, key


def test_weights_variant_in_float16(tmp_path):
    path = os.path.join(MODELS, "sd2")
    shutil.copy(os.path.join(path, "config.json"), tmp_path)
    state = {
        k: v.astype(np.float16)
        for k, v in load_file(os.path.join(path, "model.safetensors")).items()
    }
    save_file(state, os.path.join(tmp_path, "model.fp16.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_text_encoder(tmp_path)
    _, params = load_text_encoder(tmp_path, variant="fp16")
    _, ref = _loaded("sd2")
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params, ref))
    assert max(leaves) < 1e-2 and all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))


def _write_config(path, **changes):
    with open(os.path.join(MODELS, "sd1", "config.json")) as f:
        config = json.load(f)
    config.update(changes)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    shutil.copy(os.path.join(MODELS, "sd1", "model.safetensors"), path)
    return path


def test_unsupported_architecture_is_refused(tmp_path):
    cases = (["BertModel"], ["CLIPModel"], None, ["CLIPTextModel", "T5EncoderModel"])
    for i, archs in enumerate(cases):
        path = _write_config(tmp_path / str(i), architectures=archs)
        with pytest.raises(ValueError, match="CLIPTextModelWithProjection.*T5EncoderModel"):
            load_text_encoder(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_act": "gelu_fast"}, "hidden_act 'gelu_fast'"),
        ({"eos_token_id": [2, 3]}, "eos_token_id must be one integer"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantization_config"),
        ({"num_attention_heads": 5}, "not divisible"),
        ({"architectures": ["T5EncoderModel"], "is_decoder": True}, "is_decoder"),
        ({"architectures": ["T5EncoderModel"], "feed_forward_proj": "gated-foo"}, "gated-ACT"),
    ],
)
def test_unreproducible_config_fields_are_refused(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_text_encoder(_write_config(tmp_path, **changes))


def test_weight_problems_are_named(tmp_path):
    path = _write_config(tmp_path)
    state = load_file(os.path.join(path, "model.safetensors"))
    state.pop("text_model.final_layer_norm.bias")
    state["text_model.embeddings.token_embedding.weight"] = np.zeros((3, 32), np.float32)
    state["text_model.extra.weight"] = np.zeros(2, np.float32)
    save_file(state, os.path.join(path, "model.safetensors"))
    pattern = "final_layer_norm.bias.*extra.weight.*token_embedding.weight has shape"
    with pytest.raises(ValueError, match=pattern):
        load_text_encoder(path)
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_text_encoder(path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(tmp_path / "nowhere")


def test_gated_exact_gelu_t5_cannot_be_exported(tmp_path):
    module = T5EncoderModel(vocab_size=8, d_model=4, d_kv=2, d_ff=8, num_layers=1, num_heads=2,
                            activation="gelu", gated=True)  # fmt: skip
    with pytest.raises(ValueError, match="gelu_new"):
        export_text_encoder(module, {}, tmp_path)


@pytest.mark.parametrize("case", ["sdxl", "t5"])
def test_out_of_vocabulary_ids(case):
    module, params = _loaded(case)
    n = module.vocab_size
    ids = np.array([[0, 1, 2, 3]], np.int32)
    for bad in (n, n + 100, -1):
        with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {n}\).*\[{bad}\]"):
            module.apply({"params": params}, np.where(ids == 2, bad, ids))
    with pytest.raises(ValueError, match="must be integers"):
        module.apply({"params": params}, ids.astype(np.float32))
    # Inside jit the ids cannot be checked: the out-of-vocabulary row turns NaN, not clamped.
    for bad in (n, -1):
        out = jax.jit(module.apply)({"params": params}, np.where(ids == 2, bad, ids))
        assert np.isnan(np.asarray(out.last_hidden_state)).all(axis=-1).any()
    assert np.isfinite(
        np.asarray(jax.jit(module.apply)({"params": params}, ids).last_hidden_state)
    ).all()


def test_clip_sequence_longer_than_positions_is_refused():
    module, params = _loaded("sd1")
    with pytest.raises(ValueError, match="max_position_embeddings 77"):
        module.apply({"params": params}, np.zeros((1, 78), np.int32))


def test_with_projection_is_not_confused_with_text_model():
    module, params = _loaded("sdxl")
    assert isinstance(module, CLIPTextModelWithProjection)
    assert set(params) == {"text_model", "text_projection"}
