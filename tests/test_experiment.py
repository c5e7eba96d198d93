"""The config boundary without training: saved configs, sampler checks, the run's files."""

import json

import pytest

from jaxdiff.experiment import base_config, config_from_dict, validate_config
from jaxdiff.experiment.workdir import write_run_files


def test_a_saved_config_reads_back_with_new_fields_defaulted_and_retired_ones_dropped():
    saved = base_config().to_dict()
    saved["data"]["eval_split"] = "test"  # written by versions that had this field
    del saved["diffusion"]["learned_variance"]  # saved before the field existed
    saved["optim"]["lr"] = 0.5
    config = config_from_dict(json.loads(json.dumps(saved)))
    assert config.optim.lr == 0.5 and config.diffusion.learned_variance is False
    assert "eval_split" not in config.data
    saved["data"]["evaluation_split"] = "test"
    with pytest.raises(ValueError, match="Unknown config field data.evaluation_split"):
        config_from_dict(saved)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sampler="ddim", options={"etaa": 0.5}), r"config.sample \('ddim'\): .*'etaa'"),
        (dict(sampler="ddpm", num_steps=2000), r"config.sample \('ddpm'\): num_steps"),
        (
            dict(sampler="ddpm", options={"variance_type": "fixed_medium"}),
            r"config.sample \('ddpm'\): .*'fixed_medium'",
        ),
    ],
)
def test_sample_options_are_checked_with_the_config(change, message):
    config = base_config()
    config.sample.update(change)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_learned_variance_relations():
    config = base_config()
    config.diffusion.learned_variance = True
    validate_config(config)
    config.diffusion.rescale_betas_zero_snr = True
    with pytest.raises(ValueError, match="learned_variance=True: .*zero terminal SNR"):
        validate_config(config)
    config.diffusion.prediction_type = "v_prediction"
    validate_config(config)
    config.diffusion.objective = "edm"
    config.sample.sampler = "edm"
    with pytest.raises(ValueError, match="needs objective='diffusion'"):
        validate_config(config)


def test_run_files_refuse_a_resume_on_other_data(tmp_path):
    config = base_config()
    write_run_files(str(tmp_path), config, image_shape=(8, 8, 1), num_classes=10)
    write_run_files(str(tmp_path), config, image_shape=(16, 16, 1), num_classes=10)  # no step
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    write_run_files(str(tmp_path), config, image_shape=(16, 16, 1), num_classes=10)
    with pytest.raises(ValueError, match="holds a run on images .*16, 16.* use a new --workdir"):
        write_run_files(str(tmp_path), config, image_shape=(8, 8, 1), num_classes=10)
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == config.optim.lr
