"""End to end: train.py (smoke configs), interruption + resume, sample.py, and bad input."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    # One device, like a user's laptop; fast (unoptimised) compiles, as in conftest.py.
    "XLA_FLAGS": "--xla_backend_optimization_level=0",
    "JAXDIFF_DATA_DIR": "",  # set per test
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # The subprocesses compile the same programs again and again (train, resume, sample):
    # share a persistent compilation cache between them.
    "JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="jaxdiff-e2e-cache-"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def run(args, tmp_path, *, check=True, timeout=600):
    env = {**ENV, "JAXDIFF_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _committed_steps(work):
    ckpts = work / "checkpoints"
    return (
        sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []
    )


def test_train_interrupt_resume_and_sample(tmp_path):
    work = tmp_path / "run"
    # A long run, interrupted by Ctrl-C (SIGINT) once it has committed a checkpoint: it saves
    # at the next step and exits cleanly, saying how to resume.
    env = {**ENV, "JAXDIFF_DATA_DIR": str(tmp_path / "data")}
    args = ["train.py", "--config=configs/default.py:smoke", f"--workdir={work}"]
    proc = subprocess.Popen(
        [sys.executable, *args, "--config.train.num_steps=100000"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not _committed_steps(work) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    match = re.search(r"Stopped at step (\d+) \(signal\); checkpoint saved", out)
    assert match and "Interrupted: saving a checkpoint" in err, (out, err[-2000:])
    stopped = int(match.group(1))
    assert 2 <= stopped < 100000 and _committed_steps(work)[-1] == stopped
    # Resume (a few steps more) from the interrupted run's checkpoint.
    total = stopped + 2
    out = run([*args, f"--config.train.num_steps={total}"], tmp_path)
    assert f"Done: {total} steps" in out.stdout
    assert _committed_steps(work)[-1] == total
    assert (work / "config.json").exists() and (work / "run_info.json").exists()
    assert list(work.glob("events.out.tfevents*"))
    grid = Image.open(work / "samples" / f"step_{total}.png")
    assert grid.size[0] > 64
    # sample.py with per-sample seeds: the same image whatever the batch size.
    gen = tmp_path / "gen"
    args = [
        "sample.py",
        f"--workdir={work}",
        "--sampler=dpm_solver",
        "--num_steps=4",
        "--num_samples=6",
        "--guidance_scale=2",
        "--labels=1,7",
        "--seed=3",
    ]
    run([*args, "--batch_size=6", f"--out={gen}"], tmp_path)
    run([*args, "--batch_size=4", f"--out={gen}2"], tmp_path)
    a, b = np.load(gen / "samples.npz"), np.load(gen.parent / "gen2" / "samples.npz")
    assert a["images"].shape == (6, 8, 8, 1) and np.all(np.isfinite(a["images"]))
    np.testing.assert_array_equal(a["labels"], [1, 7, 1, 7, 1, 7])
    # Equal up to float rounding (XLA's kernels may vectorise differently per batch size).
    np.testing.assert_allclose(a["images"], b["images"], rtol=1e-4, atol=1e-4)
    assert (gen / "samples.png").exists()
    # Bad sampling input is refused with a clear message.
    base = ["sample.py", f"--workdir={work}", "--num_samples=2", "--num_steps=2"]
    cases = [
        (["--sampler=dpm_solverr"], "Unknown sampler 'dpm_solverr'"),
        (["--labels=10"], "Class label 10 is out of range"),
        (["--labels=-1"], "Class label -1 is out of range"),
    ]
    for extra, message in cases:
        proc = run([*base, *extra], tmp_path, check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]


def _garble_arrays(step_dir):
    """Overwrite every array data file of a checkpoint step (sizes kept)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(path.stat().st_size)))


def test_sample_skips_a_corrupt_latest_checkpoint_or_names_it(tmp_path):
    work = tmp_path / "run"
    run(["train.py", "--config=configs/default.py:smoke", f"--workdir={work}"], tmp_path)
    assert _committed_steps(work) == [2, 4, 6]
    _garble_arrays(work / "checkpoints" / "6")
    (work / "config.json").write_text("{}")  # sampling reads the checkpoint's config
    base = ["sample.py", f"--workdir={work}", "--num_samples=3", "--num_steps=2"]
    fallback = run([*base, f"--out={tmp_path / 'latest'}"], tmp_path)
    assert "Checkpoint at step 6" in fallback.stderr and "could not be restored" in fallback.stderr
    assert "Traceback" not in fallback.stderr, fallback.stderr[-3000:]
    assert "Event loop is closed" not in fallback.stderr
    run([*base, "--step=4", f"--out={tmp_path / 'step4'}"], tmp_path)
    latest, step4 = (np.load(tmp_path / name / "samples.npz") for name in ("latest", "step4"))
    np.testing.assert_array_equal(latest["images"], step4["images"])  # step 4's EMA parameters
    assert (work / "checkpoints" / "6").is_dir()  # sampling moves nothing
    # The damaged step asked for by name: one clear line, no traceback.
    proc = run([*base, "--step=6"], tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert (
        lines[0].startswith("sample.py: error: Checkpoint at step 6")
        and "other steps: 2, 4" in lines[0]
    )
    proc = run([*base, "--step=5"], tmp_path, check=False)
    assert proc.returncode != 0 and "No checkpoint at step 5" in proc.stderr


def _png_folder(path, n=16, size=32):
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(path / f"{i}.png")


@pytest.mark.parametrize("config", ["cifar10_ddpm", "cifar10_edm"])
def test_cifar_smoke_configs_on_an_image_folder(tmp_path, config):
    _png_folder(tmp_path / "imgs")
    work = tmp_path / "run"
    run(
        [
            "train.py",
            f"--config=configs/{config}.py:smoke",
            f"--workdir={work}",
            f"--config.data.path={tmp_path / 'imgs'}",
        ],
        tmp_path,
    )
    run(
        [
            "sample.py",
            f"--workdir={work}",
            "--num_samples=2",
            "--num_steps=3",
            f"--sampler={'edm' if 'edm' in config else 'ddim'}",
        ],
        tmp_path,
    )
    images = np.load(work / "generated" / "samples.npz")["images"]
    assert images.shape == (2, 32, 32, 3) and np.all(np.isfinite(images))
    proc = run(["sample.py", f"--workdir={work}", "--guidance_scale=2"], tmp_path, check=False)
    assert proc.returncode != 0 and "needs a class-conditional model" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.py", "--config=configs/default.py:smoke", "--config.optim.lrr=1"], "lrr"),
        (
            ["train.py", "--config=configs/default.py:smoke", "--config.diffusion.weighting=foo"],
            "config.diffusion.weighting='foo' is invalid",
        ),
        (
            ["train.py", "--config=configs/default.py:smoke", "--config.sample.sampler=dpm"],
            "config.sample.sampler='dpm' is invalid",
        ),
    ],
)
def test_bad_training_input(tmp_path, args, message):
    proc = run([*args, f"--workdir={tmp_path / 'w'}"], tmp_path, check=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_workdir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    proc = run(
        ["train.py", "--config=configs/default.py:smoke", f"--workdir={f}"], tmp_path, check=False
    )
    assert proc.returncode != 0 and "is a file" in proc.stderr


def test_text2img_smoke_trains_resumes_and_samples_from_prompts(tmp_path):
    work = tmp_path / "t2i"
    args = ["train.py", "--config=configs/text2img.py:smoke", f"--workdir={work}"]
    assert "Done: 4 steps" in run(args, tmp_path).stdout
    assert (work / "tokenizer.json").exists() and (work / "samples" / "step_4.png").exists()
    assert "Done: 6 steps" in run([*args, "--config.train.num_steps=6"], tmp_path).stdout
    assert _committed_steps(work) == [2, 4, 6]
    from jaxdiff.experiment import load_workdir  # sample.py starts from the run's options

    assert load_workdir(work).run_sampler == {"sampler": "ddim", "options": {"clip_sample": False}}
    # Prompts cycled over the samples; the same sampler program as the run's grid (compiled
    # once, the persistent cache serves it again).
    long = "a 3 to the left of a seven above a 2 above a 1"
    prompts = ["a 3 to the left of a seven", "a small 5 in the top right", "", long]
    base = ["sample.py", f"--workdir={work}", "--num_steps=3", "--option=clip_sample=true"]
    flags = ["--num_samples=7", "--batch_size=7", "--guidance_scale=3"]
    proc = run([*base, *flags, *(f"--prompt={p}" for p in prompts)], tmp_path)
    assert "truncated: prompt 3: 'above a 2 above a 1'" in proc.stderr  # cut, with a warning
    out = np.load(work / "generated" / "samples.npz")
    assert out["images"].shape == (7, 32, 32, 1) and np.all(np.isfinite(out["images"]))
    np.testing.assert_array_equal(out["prompts"], (prompts * 2)[:7])
    assert Image.open(work / "generated" / "samples.png").size[1] == 4 * 65 + 1  # a row each
    proc = run([*base, "--prompt=a 3 to the left of a cat"], tmp_path, check=False)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert (
        "words outside the tokenizer's vocabulary: 'cat'. The vocabulary is: 0 1 2" in proc.stderr
    )
