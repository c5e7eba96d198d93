"""The FID Inception-v3 against pytorch-fid, its weight loading, and the torch.save reader.

The parity weights (21.8M parameters, 96 MB) are not committed: the test draws them from the
same seeded numpy generator as tests/fixtures/evaluation/generate.py, and the fixture's key
list and per-tensor sums prove that both sides hold the same numbers.
"""

import hashlib
import json
import os
import pickle
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxdiff.evaluation import inception_extractor
from jaxdiff.models import convert_inception, torch_bin
from jaxdiff.models.inception import FIDInceptionV3, resize_bilinear

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "evaluation")
sys.path.insert(0, FIXTURES)
from inception_weights import random_state_dict  # noqa: E402


def _io(name):
    return np.load(os.path.join(FIXTURES, name))


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """The fixture's random weights, rebuilt from the seed and saved as safetensors."""
    io = _io("inception.npz")
    shapes = dict(zip(io["keys"], json.loads(str(io["shapes"])), strict=True))
    want = {
        convert_inception.torch_key(p) for p in convert_inception.param_shapes(FIDInceptionV3())
    }
    assert set(shapes) == want  # pytorch-fid's parameters are the ones jaxdiff builds
    state = random_state_dict(shapes, seed=0)
    sums = np.array([state[k].astype(np.float64).sum() for k in io["keys"]])
    np.testing.assert_array_equal(sums, io["sums"])  # the numbers pytorch-fid ran with
    file = tmp_path_factory.mktemp("inception") / "random_inception.safetensors"
    save_file(state, str(file))
    return str(file)


def test_resize_is_pytorch_bilinear():
    io = _io("resize.npz")
    rng = np.random.default_rng(5)
    rng.uniform(size=io["up_x"].shape)
    down = rng.uniform(size=(1, 512, 400, 3)).astype(np.float32)  # drawn second by the generator
    for name, x, size in (("up", io["up_x"], 299), ("down", down, 299), ("odd", io["odd_x"], 0)):
        out = resize_bilinear(jnp.asarray(x), (299, 299) if size else (11, 3))
        out = np.asarray(out)[:, ::7, ::7] if size else np.asarray(out)
        np.testing.assert_allclose(out, io[f"{name}_out"], atol=5e-7, err_msg=name)


def test_features_equal_pytorch_fid(random_weights):
    """pool3 of 32x32 images (resized to 299 inside, pytorch-fid's default path; through the
    jitted extractor, split over the 8 test devices) and of 75x75 images without resizing (the
    smallest size the network takes), <= 1e-4 x feature std."""
    io = _io("inception.npz")
    ext = inception_extractor(random_weights, batch_size=8)  # 3 images padded to 8, 1 per device
    ref = io["out_x32"]
    out = ext(io["x32"])
    assert out.shape == (3, 2048) and out.dtype == np.float64
    err = np.abs(out - ref).max() / ref.std()
    assert err <= 1e-4, err  # measured 2.0e-6 (torch's own float32 run: 4.7e-6)
    module, params = convert_inception.load_inception(random_weights, resize_input=False)
    ref = io["out_x75"]
    out = np.asarray(jax.jit(module.apply)({"params": params}, io["x75"]))
    err = np.abs(out - ref).max() / ref.std()
    assert err <= 1e-4, err  # measured 5.6e-6 (torch float32: 6.1e-6)


@pytest.mark.parametrize("name", ["state_zip.pth", "state_legacy.pth"])
def test_torch_bin_reads_both_torch_save_formats(name):
    out = torch_bin.load(os.path.join(FIXTURES, name))
    want = _io("state_values.npz")
    assert sorted(out) == sorted(want.files)
    for key in want.files:
        assert out[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(out[key], want[key], err_msg=key)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_torch_bin_legacy_stream_refuses_code(tmp_path):
    """The legacy format's pickles go through the same whitelist as the zip format's."""
    bad = tmp_path / "legacy.pth"
    with open(bad, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"conv.weight": _Exploit()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load (posix|os).system"):
        torch_bin.load(str(bad))


def test_torch_bin_refuses_non_checkpoints(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a torch.save file"):
        torch_bin.load(str(bad))


def test_missing_weights_name_the_file_and_how_to_point_at_it(tmp_path, monkeypatch):
    monkeypatch.delenv(convert_inception.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError) as e:
        convert_inception.load_inception()
    msg = str(e.value)
    assert convert_inception.WEIGHTS_NAME in msg and "$JAXDIFF_INCEPTION" in msg
    assert convert_inception.WEIGHTS_URL in msg
    monkeypatch.setenv(convert_inception.ENV_VAR, str(tmp_path))  # a directory without it
    with pytest.raises(FileNotFoundError, match=r"holds no pt_inception-2015-12-05-\*\.pth"):
        convert_inception.load_inception()
    with pytest.raises(FileNotFoundError, match="no such file.*pt_inception-2015-12-05"):
        convert_inception.load_inception(tmp_path / "missing.pth")


def test_wrong_weight_file_is_refused_with_the_expected_name(tmp_path, monkeypatch):
    wrong = os.path.join(FIXTURES, "wrong_weights.pth")
    with pytest.raises(ValueError) as e:
        convert_inception.load_inception(wrong)
    msg = str(e.value)
    assert "is not the FID Inception" in msg and "unexpected parameters ['AuxLogits" in msg
    assert "Conv2d_1a_3x3.conv.weight has shape (32, 3, 3, 3)" not in msg  # that one fits
    assert "missing parameters" in msg and convert_inception.WEIGHTS_NAME in msg
    # Found through $JAXDIFF_INCEPTION (a directory) under its published name and right hash.
    digest = hashlib.sha256(open(wrong, "rb").read()).hexdigest()[:8]
    shutil.copy(wrong, tmp_path / f"pt_inception-2015-12-05-{digest}.pth")
    monkeypatch.setenv(convert_inception.ENV_VAR, str(tmp_path))
    assert convert_inception.find_weights() == str(
        tmp_path / f"pt_inception-2015-12-05-{digest}.pth"
    )
    with pytest.raises(ValueError, match="is not the FID Inception"):
        convert_inception.load_inception()
    # The name's hash is checked, as torch.hub checks it.
    os.rename(tmp_path / f"pt_inception-2015-12-05-{digest}.pth",
              tmp_path / "pt_inception-2015-12-05-6726825d.pth")  # fmt: skip
    with pytest.raises(ValueError, match="does not start with the 6726825d in its name"):
        convert_inception.load_inception()


def test_shape_mismatch_is_named(random_weights):
    from safetensors.numpy import load_file

    state = load_file(random_weights)
    state["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"branch_pool.conv.weight has shape \(192, 2048, 3, 3\), "
                       r"the network needs \(192, 2048, 1, 1\)"):  # fmt: skip
        convert_inception.params_from_state_dict(state, "file")
