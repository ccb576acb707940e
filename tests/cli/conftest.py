"""Shared by the CLI tests: a per-session tiny-model cache, and the real entry point run in-process."""
import pytest

from dllm_rl.cli import main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DLLM_RL_CACHE", str(tmp_path_factory.getbasetemp() / "dllm_rl_cache"))


@pytest.fixture
def run_main(capsys):
    """``run_main(args) -> (exit code, stdout, stderr)`` of the real entry point (its error handling included)."""
    def run(args):
        with pytest.raises(SystemExit) as exc:
            main(args)
            raise SystemExit(0)
        captured = capsys.readouterr()
        return exc.value.code, captured.out, captured.err

    return run
