"""Exact resume: runs killed (SIGKILL, incl. during an async checkpoint write) or preempted
(SIGTERM) and resumed end bit-identical to an uninterrupted run. Runs tests/resume_script.py
as subprocesses."""

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    rc, lines = _run(root, root / "cache", "--out", str(root / "final.npz"))
    assert rc == 0 and lines[-1] == f"done {NUM_STEPS}", lines
    return np.load(root / "final.npz"), root / "cache"


def _assert_bit_identical(path, reference):
    got = np.load(path)
    assert sorted(got.files) == sorted(reference.files)
    assert int(got["data_position"]) == NUM_STEPS
    for name in reference.files:
        np.testing.assert_array_equal(got[name], reference[name], err_msg=name)
    assert any("opt_state" in n for n in got.files) and any("ema_params" in n for n in got.files)


def test_sigkill_at_arbitrary_moments_resumes_bit_identically(tmp_path, uninterrupted):
    reference, cache = uninterrupted
    # 1. Killed while the async write of step 6 is in flight: only step 3 is committed.
    rc, lines = _run(tmp_path, cache, "--kill-during-save-at", "6")
    assert rc == -signal.SIGKILL and lines[-1].startswith("killing during save 6"), lines
    assert "'6'" not in lines[-1] and "'6." in lines[-1]  # the write had not completed
    assert _committed_steps(tmp_path) == [3]
    # 2. Killed mid-run (between or during checkpoint writes, as timing has it), twice.
    for until in ("step 8", "step 10"):
        latest = _committed_steps(tmp_path)[-1]
        rc, lines = _run(tmp_path, cache, "--step-delay", "0.05", until=until)
        assert rc == -signal.SIGKILL and lines[0] == f"resumed {latest}", lines
        assert f"step {latest + 1}" in lines and until in lines
    # 3. Killed while restoring / compiling, before any step.
    rc, lines = _run(tmp_path, cache, until="resumed")
    assert rc == -signal.SIGKILL and not any(line.startswith("step") for line in lines)
    # 4. Runs to the end from the latest committed checkpoint.
    latest = _committed_steps(tmp_path)[-1]
    rc, lines = _run(tmp_path, cache, "--out", str(tmp_path / "final.npz"))
    assert rc == 0 and lines[0] == f"resumed {latest}" and lines[-1] == f"done {NUM_STEPS}", lines
    _assert_bit_identical(tmp_path / "final.npz", reference)


def test_sigterm_saves_exits_cleanly_and_resumes_bit_identically(tmp_path, uninterrupted):
    reference, cache = uninterrupted
    rc, lines = _run(tmp_path, cache, "--step-delay", "0.2", until="step 4", sig=signal.SIGTERM)
    assert rc == 0 and lines[-1].startswith("preempted"), lines
    stopped = int(lines[-1].split()[1])
    assert 4 <= stopped < NUM_STEPS and stopped in _committed_steps(tmp_path)
    rc, lines = _run(tmp_path, cache, "--out", str(tmp_path / "final.npz"))
    assert rc == 0 and lines[0] == f"resumed {stopped}", lines
    _assert_bit_identical(tmp_path / "final.npz", reference)
