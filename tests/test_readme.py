"""Every command README.md shows runs as written: the cheap ones are run (compare, config show, list,
lm-eval's help), the long ones (a whole RL run, installs, the test suite) are resolved exactly as
`dllm-rl` would before any work (names, settings, recipes, files), and the Python API example runs."""
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RUN_COMMANDS = ("run", "train")


def bash_commands() -> list[str]:
    """The command lines of README's ```bash blocks (comments dropped, `&&` chains split)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def table_commands() -> list[str]:
    """The `dllm-rl ...` commands of README's command-line table, placeholders and all."""
    return [c.replace("\\|", "|") for c in re.findall(r"^\| `(dllm-rl [^`]+)`", README, re.M)]


def test_readme_is_a_short_read():
    assert len(README.encode()) <= 12_500
    assert "issue" not in README.lower()  # the project's own process stays out of it


def test_every_bash_command_is_known():
    commands = bash_commands()
    assert commands, "README has no bash commands"
    for c in commands:
        assert c.split()[0] in ("pip", "pytest", "dllm-rl"), c


def dllm(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dllm_rl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**__import__("os").environ, **env})


@pytest.fixture
def user_folder(tmp_path):
    """A user's working folder after the main job: its results file in runs/results, and the
    committed studies in results/ (a clone)."""
    (tmp_path / "runs" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "results" / "main" / "tiny__sudoku__espo__seed0.json", tmp_path / "runs" / "results")
    shutil.copytree(ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("*.png"))
    (tmp_path / "my_data.jsonl").write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n"
                                                    for a in range(40)))
    (tmp_path / "my_rewards.py").write_text("def reward(example, completion):\n"
                                            "    return float(completion.strip() == example['answer'])\n")
    return tmp_path


def test_every_dllm_rl_command_in_readme_runs_or_resolves(user_folder):
    commands = [c for c in bash_commands() if c.startswith("dllm-rl")]
    commands += ["dllm-rl config show --algo espo --task sudoku", "dllm-rl list", "dllm-rl lm-eval --help"]
    assert any(c.startswith("dllm-rl run") for c in commands) and any(c.startswith("dllm-rl compare") for c in commands)
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] in RUN_COMMANDS:  # a whole RL run: resolved exactly as `run` would, then not run
            args = ["config", "show", *args[1:]]
        proc = dllm(args, user_folder, DLLM_RL_CACHE=str(user_folder / "cache"))
        assert proc.returncode == 0, f"{command}: {proc.stderr}"
        assert "Traceback" not in proc.stderr, command
        if args[0] == "compare":
            assert "espo" in proc.stdout and "(base)" in proc.stdout, command
    compare = dllm(["compare"], user_folder)
    assert compare.stdout.count("Δ espo") == 1  # the user's own run alone, not the committed studies


def test_command_table_names_real_subcommands_and_options():
    from click.testing import CliRunner

    from dllm_rl.cli import cli

    for command in table_commands():
        words = shlex.split(command.replace("[", " ").replace("]", " "))[1:]
        sub = words[0]
        path = ["config", "show"] if sub == "config" else [sub]
        help_text = CliRunner().invoke(cli, [*path, "--help"]).output
        if sub == "lm-eval":
            continue  # every flag passes to lm-eval's own parser
        for w in words:
            if w.startswith("--"):
                assert w.split("=")[0] in help_text, f"{command}: {w} is not an option of `dllm-rl {sub}`"


def test_python_api_example_runs_as_written(tmp_path):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          env={**__import__("os").environ, "DLLM_RL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after = (float(x) for x in proc.stdout.strip().splitlines()[-1].split("->"))
    assert 0 <= before <= 1 and 0 <= after <= 1
    assert (tmp_path / "runs" / "results" / "tiny__sudoku__espo__seed0.json").is_file()
