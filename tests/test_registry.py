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


# -- entry-point plugins: descriptions, presets, names defined twice ---------------------------------

PLUGIN_MODULE = '''
from dllm_rl.task import Task


class Mine(Task):
    """My task, in one line.

    More about it."""

    presets = [{"set": {"pretrain.steps": 11}},
               {"match": {"model": "llada"}, "set": {"pretrain.steps": 22}},
               {"match": {"algorithm": ["espo", "wd1"]}, "set": {"optim.lr": 0.003}}]


class Described(Task):
    """Not this."""

    description = "This one."


class Bad(Task):
    presets = [{"match": {"modle": "tiny"}, "set": {"optim.lr": 1.0}}]


def load(run, task, progress):
    """My model family."""


load.presets = [{"match": {"task": "sudoku"}, "set": {"model.lora": True}}]
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch, install_dist):
    """A package ``registry-test-plugin`` with tasks mine, described, bad and broken, and a model family mine."""
    install_dist(tmp_path, "registry-test-plugin",
            {"tasks": {"mine": "registry_test_plugin:Mine", "described": "registry_test_plugin:Described",
                       "bad": "registry_test_plugin:Bad", "broken": "registry_test_plugin:Missing"},
             "models": {"mine": "registry_test_plugin:load"}},
            {"registry_test_plugin.py": PLUGIN_MODULE})
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugins_description_is_its_attribute_or_its_docstrings_first_line(plugins):
    tasks = registry.entries("tasks")
    assert tasks["mine"].source == "entry point (registry-test-plugin)" and tasks["mine"].description == ""
    assert registry.describe(tasks["mine"]) == "My task, in one line."
    assert registry.describe(tasks["described"]) == "This one."
    assert registry.describe(tasks["broken"]).startswith("(cannot be loaded:")
    assert registry.describe(tasks["sudoku"]) == tasks["sudoku"].description  # built-ins: registry.yaml's
    assert registry.describe(registry.model("mine")) == "My model family."  # a function's docstring


def test_plugin_presets_follow_the_builtin_ones_and_match_like_them(plugins):
    builtin = registry.presets("tiny", "not-a-plugin", "espo")
    ours = registry.presets("tiny", "mine", "espo")
    assert ours == builtin + [{"pretrain.steps": 11}, {"optim.lr": 0.003}]  # later wins: the plugin's over built-ins
    assert {"pretrain.steps": 11} in registry.presets("tiny", "mine", "spg")
    assert {"optim.lr": 0.003} not in registry.presets("tiny", "mine", "spg")
    # a model match fits the model's family too
    assert registry.presets("llada-1.5", "mine", "spg", "llada")[-2:] == [{"pretrain.steps": 11}, {"pretrain.steps": 22}]
    # a model family's presets: an attribute of its load function
    assert registry.presets("mine", "sudoku", "spg")[-1] == {"model.lora": True}
    assert {"model.lora": True} not in registry.presets("mine", "countdown", "spg")


def test_malformed_plugin_presets_are_one_line_naming_the_plugin(plugins):
    with pytest.raises(UsageError, match=r"task 'bad' \(entry point \(registry-test-plugin\)\): each preset must be"):
        registry.presets("tiny", "bad", "espo")


def test_a_name_defined_twice_is_an_error_naming_the_package(tmp_path, monkeypatch, install_dist):
    install_dist(tmp_path / "a", "first-plugin", {"tasks": {"twice": "first:T"}, "algorithms": {"espo": "first:ESPO"}})
    install_dist(tmp_path / "b", "second-plugin", {"tasks": {"twice": "second:T"}})
    install_dist(tmp_path / "c", "first-plugin-again", {"tasks": {"twice": "first:T"}})  # the same target: no clash
    for sub in "abc":
        monkeypatch.syspath_prepend(str(tmp_path / sub))
    with pytest.raises(UsageError) as err:
        registry.get("algorithms", "espo")
    assert str(err.value) == ("algorithm 'espo' is defined twice: built-in and an entry point of package 'first-plugin' "
                              "(group dllm_rl.algorithms); rename that entry point or uninstall the package")
    with pytest.raises(UsageError, match="task 'twice' is defined twice: entry point .* package 'second-plugin'"):
        registry.get("tasks", "twice")
    assert registry.entries("tasks")["twice"].duplicates == ["second-plugin"]  # one package twice on the path: no clash
    assert registry.entries("tasks")["sudoku"].conflict() is None
    assert registry.get("algorithms", "spg").builtin


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    """Any exception while importing a plugin (not only ImportError) is a UsageError naming it."""
    from dllm_rl.errors import UsageError
    from dllm_rl.registry import Entry

    (tmp_path / "broken_plugin_mod.py").write_text("raise RuntimeError('needs a GPU at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = Entry("broken", "tasks", "broken_plugin_mod:Task", "entry point (broken-pkg)")
    with pytest.raises(UsageError, match=r"task 'broken' \(entry point \(broken-pkg\)\) cannot be loaded .*"
                                         r"RuntimeError: needs a GPU at import"):
        entry.load()
