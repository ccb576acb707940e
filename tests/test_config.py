"""Typed run configuration: --set parsing, dotted-path routing, type checking, merging."""
import pytest

from dllm_rl.algorithms.espo import ESPOConfig
from dllm_rl.config import (OptimConfig, PluginRef, RolloutConfig, RunConfig, from_dict, load_yaml, merge,
                            parse_override, set_path, to_dict)
from dllm_rl.errors import UsageError


# -- --set key=value -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,key,value", [
    ("optim.lr=1e-4", "optim.lr", 1e-4),
    ("optim.lr=3.0e-6", "optim.lr", 3e-6),
    ("optim.lr=1E3", "optim.lr", 1000.0),
    ("eval.base=true", "eval.base", True),
    ("eval.base=false", "eval.base", False),
    ("eval.lengths=[1, 2]", "eval.lengths", [1, 2]),
    ("optim.max_steps=10", "optim.max_steps", 10),
    (" task.name = sudoku", "task.name", "sudoku"),
    ("eval.max_examples=null", "eval.max_examples", None),
    ("output.results_dir=", "output.results_dir", ""),
    ("algorithm.note=a=b", "algorithm.note", "a=b"),
])
def test_parse_override_reads_yaml_values(text, key, value):
    k, v = parse_override(text)
    assert k == key
    assert v == value and type(v) is type(value)


def test_parse_override_keeps_plain_strings():
    assert parse_override("task.name=countdown") == ("task.name", "countdown")
    assert parse_override("model.name=e5") == ("model.name", "e5")  # has an 'e' but is no number


def test_parse_override_needs_an_equals_sign():
    with pytest.raises(UsageError, match="key=value"):
        parse_override("optim.lr")


# -- dotted paths ----------------------------------------------------------------------------------

def test_set_path_routes_plugin_settings_into_params():
    data = {}
    set_path(data, "algorithm.beta", 0.01)
    set_path(data, "task.seed", 3)
    set_path(data, "algorithm.name", "espo")
    set_path(data, "optim.lr", 1e-4)
    set_path(data, "seed", 5)
    assert data == {"algorithm": {"params": {"beta": 0.01}, "name": "espo"}, "task": {"params": {"seed": 3}},
                    "optim": {"lr": 1e-4}, "seed": 5}
    set_path(data, "algorithm.params.mu", 2)  # an explicit params path is not doubled
    assert data["algorithm"]["params"] == {"beta": 0.01, "mu": 2}


def test_set_path_refuses_to_descend_into_a_value():
    data = {"seed": 1}
    with pytest.raises(UsageError, match="not a section"):
        set_path(data, "seed.x", 2)


def test_merge_is_deep_and_expands_dotted_keys():
    base = {"optim": {"lr": 1.0, "max_steps": 10}, "algorithm": {"name": "espo", "params": {"mu": 8}}}
    out = merge(base, {"optim": {"lr": 2.0}, "algorithm.beta": 0.1, "rollout.group_size": 4, "seed": 1})
    assert out == {"optim": {"lr": 2.0, "max_steps": 10},
                   "algorithm": {"name": "espo", "params": {"mu": 8, "beta": 0.1}},
                   "rollout": {"group_size": 4}, "seed": 1}
    assert merge({"a": {"b": 1}}, {"a": 3}) == {"a": 3}  # a value replaces a section
    assert merge({}, {}) == {}


def test_merge_does_not_mutate_its_inputs():
    """merge() is documented as a deep merge returning a new dict: later dotted updates must not
    write into the caller's nested dicts (e.g. a recipe or a cached registry preset)."""
    base = {"optim": {"lr": 1.0}, "algorithm": {"name": "espo", "params": {"mu": 8}}}
    merge(base, {"optim": {"lr": 2.0}, "algorithm.beta": 0.1})
    assert base == {"optim": {"lr": 1.0}, "algorithm": {"name": "espo", "params": {"mu": 8}}}
    recipe = {"algorithm": {"params": {"mu": 4}}}
    data = merge({}, recipe)  # as resolve_config does, before applying --set overrides
    set_path(data, "algorithm.beta", 0.5)
    assert recipe == {"algorithm": {"params": {"mu": 4}}}


# -- typed construction ----------------------------------------------------------------------------

def test_from_dict_builds_nested_dataclasses():
    run = from_dict(RunConfig, {"seed": 3, "optim": {"lr": 1e-4}, "algorithm": {"name": "espo", "params": {"beta": 0.1}},
                                "eval": {"lengths": [8, 16]}})
    assert run.seed == 3 and isinstance(run.optim, OptimConfig) and run.optim.lr == 1e-4
    assert run.optim.max_steps == OptimConfig().max_steps  # untouched defaults stay
    assert isinstance(run.algorithm, PluginRef) and run.algorithm.params == {"beta": 0.1}
    assert run.eval.lengths == [8, 16]
    assert run.task.name == "sudoku"
    assert to_dict(run)["optim"]["lr"] == 1e-4


def test_from_dict_unknown_key_lists_the_valid_keys():
    with pytest.raises(UsageError) as err:
        from_dict(RunConfig, {"optim": {"lrr": 1e-4}})
    msg = str(err.value)
    assert "'optim.lrr'" in msg
    for name in ("lr", "max_steps", "grad_clip", "micro_batch_size"):
        assert name in msg
    with pytest.raises(UsageError, match="unknown setting 'sed'"):
        from_dict(RunConfig, {"sed": 1})


@pytest.mark.parametrize("data,where", [
    ({"optim": {"max_steps": "ten"}}, "optim.max_steps"),
    ({"optim": {"max_steps": 1.5}}, "optim.max_steps"),
    ({"optim": {"max_steps": True}}, "optim.max_steps"),  # bool is not an int here
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"eval": {"base": "yes"}}, "eval.base"),
    ({"eval": {"base": 1}}, "eval.base"),
    ({"model": {"name": 3}}, "model.name"),
    ({"eval": {"lengths": 8}}, "eval.lengths"),
    ({"eval": {"lengths": [8, "x"]}}, "eval.lengths"),
    ({"rollout": {"gen_length": "long"}}, "rollout.gen_length"),
    ({"optim": 3}, "optim"),
    ({"algorithm": {"params": [1]}}, "algorithm.params"),
])
def test_from_dict_rejects_wrong_types(data, where):
    with pytest.raises(UsageError) as err:
        from_dict(RunConfig, data)
    assert str(err.value).startswith(where + ":")


def test_from_dict_coerces_int_to_float_only():
    run = from_dict(RunConfig, {"optim": {"lr": 1, "grad_clip": 2}})
    assert run.optim.lr == 1.0 and type(run.optim.lr) is float and type(run.optim.grad_clip) is float
    c = from_dict(ESPOConfig, {"beta": 0, "mu": 2}, "algorithm")
    assert type(c.beta) is float and c.mu == 2
    assert from_dict(RolloutConfig, {"gen_length": None}).gen_length is None
    assert from_dict(RolloutConfig, {"gen_length": 64}).gen_length == 64
    with pytest.raises(UsageError, match="algorithm.bta"):
        from_dict(ESPOConfig, {"bta": 0.1}, "algorithm")


def test_dataclass_validation_errors_become_usage_errors():
    from dllm_rl.diffusion.sampler import SamplerConfig
    with pytest.raises(UsageError, match="remasking"):
        from_dict(SamplerConfig, {"remasking": "nope"})


def test_load_yaml(tmp_path):
    good = tmp_path / "r.yaml"
    good.write_text("optim:\n  lr: 1.0e-4\nalgorithm: espo\n")
    assert load_yaml(good) == {"optim": {"lr": 1e-4}, "algorithm": "espo"}
    with pytest.raises(UsageError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(UsageError, match="mapping"):
        load_yaml(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_yaml(broken)


def test_rollout_threshold_and_early_stop_are_checked():
    run = from_dict(RunConfig, {"rollout": {"threshold": 0.9, "early_stop": True}})
    assert run.rollout.threshold == 0.9 and run.rollout.early_stop is True
    assert RunConfig().rollout.threshold is None and RunConfig().rollout.early_stop is False
    with pytest.raises(UsageError, match="threshold must be in"):
        from_dict(RunConfig, {"rollout": {"threshold": 1.5}})
    with pytest.raises(UsageError, match="remasking"):
        from_dict(RunConfig, {"rollout": {"threshold": 0.9, "remasking": "random"}})


def test_config_differences_counts_a_missing_setting_as_its_default():
    from dllm_rl.config import config_differences

    defaults = {"rollout": {"steps": 0, "prompt_cache": False}, "optim": {"lr": 1e-4}}
    old = {"rollout": {"steps": 0}, "optim": {"lr": 1e-4}}  # predates rollout.prompt_cache
    assert config_differences(old, {"rollout": {"steps": 0, "prompt_cache": False}, "optim": {"lr": 1e-4}}, defaults) == []
    # turning the new option on, or changing an old one, is a difference (sorted by key)
    new = {"rollout": {"steps": 4, "prompt_cache": True}, "optim": {"lr": 1e-4}}
    assert config_differences(old, new, defaults) == [("rollout.prompt_cache", None, True), ("rollout.steps", 0, 4)]
    # a setting unknown to the defaults is never excused
    assert config_differences({}, {"extra": {"x": 1}}, defaults) == [("extra.x", None, 1)]
    # the real RunConfig defaults are used when none are given
    from dllm_rl.config import RunConfig, to_dict
    full = to_dict(RunConfig())
    trimmed = {k: v for k, v in full.items() if k != "rollout"}
    assert config_differences(trimmed, full) == []


def test_a_list_of_names_takes_one_name_alone():
    """transformers' spelling ``report_to=tensorboard``: one name for a list of names."""
    from dllm_rl.pipeline import resolve_config

    assert resolve_config(sets=("output.report_to=tensorboard",)).output.report_to == ["tensorboard"]
    assert resolve_config(sets=("output.report_to=[tensorboard]",)).output.report_to == ["tensorboard"]
    with pytest.raises(UsageError, match="expected a list"):
        resolve_config(sets=("output.report_to=3",))
