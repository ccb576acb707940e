"""docs/plugins.md is enough to write a plugin: its code blocks, written out as a package and installed,
are listed with their descriptions, bring their presets, and train on the tiny model."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BLOCK = re.compile(r"^```\w+ file=(\S+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def doc_files() -> dict[str, str]:
    """The doc's code blocks marked ``file=PATH``, by path."""
    return dict(BLOCK.findall(DOC.read_text()))


@pytest.fixture(scope="module")
def doc_plugin_env(tmp_path_factory):
    """The doc's package written out and installed (a real wheel install into a target folder, offline)."""
    package = tmp_path_factory.mktemp("package")
    for name, text in doc_files().items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(package)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
               DLLM_RL_CACHE=str(tmp_path_factory.mktemp("cache")), OMP_NUM_THREADS="1")  # tiny tensors, busy cores
    return env, target


def dllm_rl(args, env, cwd):
    out = subprocess.run([sys.executable, "-m", "dllm_rl.cli", *args], env=env, cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def test_the_doc_holds_a_whole_package():
    assert set(doc_files()) == {"pyproject.toml", "my_dllm_plugin/__init__.py", "my_dllm_plugin/task.py",
                                "my_dllm_plugin/algorithm.py"}


def test_listed_with_descriptions(doc_plugin_env, tmp_path):
    text = " ".join(dllm_rl(["list"], doc_plugin_env[0], tmp_path).split())
    assert "sort-digits │ entry point (my-dllm-plugin)" in text and "elbo-clip │ entry point (my-dllm-plugin)" in text
    assert "Sort a string of digits; reward: fraction of positions right." in text
    assert "Clipped ratio exp((ELBO - ELBO_old) / L)" in text


def test_presets_come_between_the_built_in_ones_and_set(doc_plugin_env, monkeypatch):
    from dllm_rl.pipeline import resolve_config

    monkeypatch.syspath_prepend(str(doc_plugin_env[1]))
    tiny = resolve_config("elbo-clip", "sort-digits", "tiny")
    assert tiny.pretrain.steps == 100  # the task's preset, over the 1,500 default
    assert tiny.optim.lr == 1e-4  # the built-in tiny preset still applies
    assert "num_mc" not in tiny.algorithm.params  # the algorithm's preset is for the 8B families only
    assert resolve_config("elbo-clip", "sort-digits", "tiny", sets=("pretrain.steps=7",)).pretrain.steps == 7
    llada = resolve_config("elbo-clip", "sort-digits", "llada")
    assert llada.algorithm.params["num_mc"] == 2  # the algorithm's preset, matched by model family
    assert llada.model.lora  # with the built-in llada preset


def test_trains_on_the_tiny_model(doc_plugin_env, tmp_path):
    dllm_rl(["run", "--algo", "elbo-clip", "--task", "sort-digits", "--set", "pretrain.steps=30",
             "--set", "optim.max_steps=2", "--set", "rollout.num_prompts=4", "--set", "rollout.group_size=2",
             "--set", "eval.max_examples=8"], doc_plugin_env[0], tmp_path)
    [path] = tmp_path.rglob("tiny__sort-digits__elbo-clip__seed0.json")
    result = json.loads(path.read_text())
    assert result["training"]["steps"] == 2 and len(result["training"]["curve"]) == 2
    assert {"elbo", "ratio", "ratio_max"} <= set(result["training"]["curve"][0])
    assert result["metrics"]["8"]["n"] == 8
