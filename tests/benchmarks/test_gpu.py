"""benchmarks/gpu.py: the --smoke run (tiny LLaDA and Dream on CPU) goes through every measurement,
and without --smoke a machine without CUDA gets a one-line exit 2."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_smoke_measures_both_models(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["smoke"] is True and set(data["models"]) == {"llada", "dream"}
    for name, entry in data["models"].items():
        m = entry["measured"]
        assert all(_positive(v["tokens_per_s"]) for v in m["forward"].values()), name
        assert _positive(m["rollout"]["ratio_to_forward_bound"]) and _positive(m["rollout"]["tokens_per_s"]), name
        assert _positive(m["espo"]["step_s"]) and _positive(m["espo"]["prepare_s"]), name
        assert math.isfinite(m["espo"]["loss"]) and math.isfinite(m["espo"]["grad_norm"]), name
        assert _positive(entry["extrapolated"]["recipe_step"]["step_s"]), name
    assert "dream" in proc.stdout and "ratio to forward bound" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run("--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "no CUDA device: run with --smoke on CPU"
    assert not out.exists()
