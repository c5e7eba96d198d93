"""Exact resume: a run killed (SIGKILL, 3 times, once during an async checkpoint write) and
preempted (SIGTERM), resumed each time, ends bit-identical to an uninterrupted run; so does a
run with a text encoder trained in the state, killed mid-run. Runs tests/resume_script.py as
subprocesses."""

import os
import signal
import subprocess
import sys
import threading

import numpy as np

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_script.py")
NUM_STEPS = 14
TIMEOUT_S = 240


def _env(cache_dir):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["RESUME_TEST_COMPILATION_CACHE"] = str(cache_dir)  # later runs skip compiling
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(SCRIPT)), env.get("PYTHONPATH", "")]
    )
    return env


def _run(workdir, cache_dir, *extra, until=None, sig=signal.SIGKILL):
    """Run the script; if ``until`` is given, send ``sig`` when a line starts with it.

    Returns (return code, stdout lines).
    """
    cmd = [sys.executable, SCRIPT, str(workdir), str(NUM_STEPS), *extra]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(cache_dir)
    )
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if until is not None and line.startswith(until):
                proc.send_signal(sig)
                until = None
        return proc.wait(), lines
    finally:
        watchdog.cancel()


def _committed_steps(workdir):
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit())


def _assert_bit_identical(path, reference):
    got = np.load(path)
    assert sorted(got.files) == sorted(reference.files)
    assert int(got["data_position"]) == NUM_STEPS
    for name in reference.files:
        np.testing.assert_array_equal(got[name], reference[name], err_msg=name)
    assert any("opt_state" in n for n in got.files) and any("ema_params" in n for n in got.files)


def test_killed_and_preempted_run_resumes_bit_identically(tmp_path):
    cache = tmp_path / "cache"
    rc, lines = _run(tmp_path / "straight", cache, "--out", str(tmp_path / "straight.npz"))
    assert rc == 0 and lines[-1] == f"done {NUM_STEPS}", lines
    reference = np.load(tmp_path / "straight.npz")

    work = tmp_path / "interrupted"
    # 1. SIGKILL while the async write of step 6 is in flight: only step 3 is committed.
    rc, lines = _run(work, cache, "--kill-during-save-at", "6")
    assert rc == -signal.SIGKILL and lines[-1].startswith("killing during save 6"), lines
    assert "'6'" not in lines[-1] and "'6." in lines[-1]  # the write had not completed
    assert _committed_steps(work) == [3]
    # 2. SIGKILL mid-run (between or during checkpoint writes, as timing has it).
    rc, lines = _run(work, cache, "--step-delay", "0.05", until="step 8")
    assert rc == -signal.SIGKILL and lines[0] == "resumed 3" and "step 4" in lines, lines
    # 3. SIGTERM (preemption): saves a checkpoint at the next step and exits cleanly.
    latest = _committed_steps(work)[-1]
    rc, lines = _run(work, cache, "--step-delay", "0.1", until="step 10", sig=signal.SIGTERM)
    assert rc == 0 and lines[0] == f"resumed {latest}" and lines[-1].startswith("preempted"), lines
    stopped = int(lines[-1].split()[1])
    assert 10 <= stopped < NUM_STEPS and _committed_steps(work)[-1] == stopped
    # 4. SIGKILL while restoring / compiling, before any step.
    rc, lines = _run(work, cache, until="resumed")
    assert rc == -signal.SIGKILL and not any(line.startswith("step") for line in lines)
    # 5. Runs to the end from the latest committed checkpoint.
    rc, lines = _run(work, cache, "--out", str(tmp_path / "final.npz"))
    assert rc == 0 and lines[0] == f"resumed {stopped}" and lines[-1] == f"done {NUM_STEPS}"
    _assert_bit_identical(tmp_path / "final.npz", reference)


def test_run_with_a_text_encoder_in_the_state_resumes_bit_identically(tmp_path):
    cache = tmp_path / "cache"
    rc, lines = _run(tmp_path / "straight", cache, "--text", "--out", str(tmp_path / "s.npz"))
    assert rc == 0 and lines[-1] == f"done {NUM_STEPS}", lines
    reference = np.load(tmp_path / "s.npz")
    assert any("text_encoder" in n for n in reference.files)
    work = tmp_path / "interrupted"
    rc, lines = _run(work, cache, "--text", "--step-delay", "0.05", until="step 8")
    assert rc == -signal.SIGKILL and "step 8" in lines, lines  # SIGKILL mid-run
    latest = _committed_steps(work)[-1]
    rc, lines = _run(work, cache, "--text", "--out", str(tmp_path / "final.npz"))
    assert rc == 0 and lines[0] == f"resumed {latest}" and lines[-1] == f"done {NUM_STEPS}", lines
    _assert_bit_identical(tmp_path / "final.npz", reference)
