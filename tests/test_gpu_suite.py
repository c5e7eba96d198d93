"""The GPU suite runs its tables at tiny sizes on the CPU (so it works when a GPU is lent)."""

import importlib.util
from pathlib import Path

SUITE = Path(__file__).parent.parent / "benchmarks" / "gpu_suite.py"


def test_gpu_suite_tiny_tables(capsys):
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    rows = suite.main(["--tiny", "--rounds", "1"])
    names = [r["row"] for r in rows]
    assert names[0].startswith("train step TINY") and rows[0]["images/s"] > 0
    assert rows[0]["GFLOP/step"] > 0 and rows[0]["MFU"] is None  # no peak known for a CPU
    evals = [r for r in rows if "evals/s" in r]
    assert {r["row"].split("attention=")[1] for r in evals} == {"flash", "xla"}
    assert all(r["evals/s"] > 0 for r in evals)
    out = capsys.readouterr().out
    assert "| train step TINY" in out and "attention=cudnn | note n/a on cpu" in out
