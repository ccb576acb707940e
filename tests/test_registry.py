"""Name -> plugin resolution: built-ins, did-you-mean errors, presets."""
import pytest

from dllm_rl import registry
from dllm_rl.errors import UsageError


def test_builtins_are_listed_with_their_source():
    algos = registry.entries("algorithms")
    assert "espo" in algos
    e = algos["espo"]
    assert e.source == "built-in" and e.kind == "algorithms" and e.target == "dllm_rl.algorithms.espo:ESPO"
    assert e.description
    assert {"sudoku", "countdown"} <= set(registry.entries("tasks"))
    assert registry.entries("models")["tiny"].source == "built-in"


def test_get_and_load_a_builtin():
    from dllm_rl.algorithms.espo import ESPO
    assert registry.get("algorithms", "espo").load() is ESPO
    assert callable(registry.get("models", "tiny").load())


def test_unknown_name_suggests_the_closest_and_lists_the_valid_ones():
    with pytest.raises(UsageError) as err:
        registry.get("algorithms", "esp")
    msg = str(err.value)
    assert "unknown algorithm 'esp'" in msg
    assert "Did you mean 'espo'?" in msg
    assert "Valid: " in msg and "espo" in msg.split("Valid: ")[1]
    with pytest.raises(UsageError) as err:
        registry.get("tasks", "sudok")
    assert "Did you mean 'sudoku'?" in str(err.value)
    valid = str(err.value).split("Valid: ")[1]
    assert "countdown" in valid and "sudoku" in valid


def test_unknown_name_without_a_close_match_has_no_suggestion():
    with pytest.raises(UsageError) as err:
        registry.get("tasks", "zzzzzzzz")
    assert "Did you mean" not in str(err.value) and "Valid: " in str(err.value)


def test_bad_target_is_a_usage_error():
    entry = registry.Entry("broken", "algorithms", "dllm_rl.no_such_module:X", "built-in")
    with pytest.raises(UsageError, match="cannot be loaded"):
        entry.load()
    entry = registry.Entry("broken", "algorithms", "dllm_rl.algorithms.espo:NoSuchClass", "built-in")
    with pytest.raises(UsageError, match="'broken'"):
        entry.load()


def test_presets_match_on_model_task_and_algorithm_in_file_order():
    tiny_espo = registry.presets("tiny", "sudoku", "espo")
    assert len(tiny_espo) >= 2
    assert any(p.get("algorithm.mu") == 1 for p in tiny_espo)
    assert any("optim.lr" in p for p in tiny_espo)
    # the model-only preset comes before the more specific one (later presets win)
    first_general = next(i for i, p in enumerate(tiny_espo) if "optim.lr" in p)
    first_specific = next(i for i, p in enumerate(tiny_espo) if "algorithm.mu" in p)
    assert first_general < first_specific
    # another algorithm on the tiny model gets the general preset only
    other = registry.presets("tiny", "sudoku", "not-espo")
    assert other and all("algorithm.mu" not in p for p in other)
    # another model gets no tiny preset
    assert all("optim.lr" not in p for p in registry.presets("some-hf-model", "sudoku", "espo"))


def test_trace_task_gets_sudokus_paper_settings():
    from dllm_rl.pipeline import resolve_config

    def params(algo, task):
        return resolve_config(algo, task, "tiny").algorithm.params

    for algo, mu in (("diffu-grpo", 8), ("token-elbo", 8), ("espo", 1)):
        assert params(algo, "sudoku-trace")["mu"] == params(algo, "sudoku")["mu"] == mu
    assert params("spg", "sudoku-trace")["eubo_beta"] == 1.0
    assert resolve_config("espo", "sudoku-trace", "tiny").pretrain.num_examples is None  # all traces, stopped early
