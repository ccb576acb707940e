"""The packaged LLaDA-8B / Dream-7B recipes resolve by name and carry the ESPO paper's configuration."""
import pytest

from dllm_rl.config import packaged_recipes
from dllm_rl.pipeline import resolve_config

RECIPES = ["llada-8b-espo-countdown", "llada-8b-espo-sudoku", "dream-7b-espo-countdown", "dream-7b-espo-sudoku"]


def test_recipes_are_packaged():
    assert set(RECIPES) <= set(packaged_recipes())


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_has_the_papers_configuration(name):
    run = resolve_config(recipe=name)
    family, task = name.split("-")[0], name.split("-")[-1]
    assert run.model.name == family and run.task.name == task and run.algorithm.name == "espo"
    m, r, o, a = run.model, run.rollout, run.optim, run.algorithm.params
    assert (m.lora, m.lora_r, m.lora_alpha, m.gradient_checkpointing) == (True, 128, 64, True)
    assert (o.lr, o.beta1, o.beta2, o.weight_decay, o.grad_clip) == (3e-6, 0.9, 0.99, 0.01, 0.2)
    assert (r.group_size, r.num_prompts, r.gen_length, r.steps, r.temperature) == (6, 16, 256, 128, 0.9)
    assert (a["mu"], a["num_mc"], a["coupled"], a["kl"]) == (8, 2, True, "k2")
    assert r.block_length == (32 if family == "llada" else 256)  # Dream samples without semi-AR blocks
    assert run.eval.lengths == [128, 256, 512]


def test_a_recipe_path_still_works_and_a_bad_name_lists_the_packaged_ones(tmp_path):
    from dllm_rl.errors import UsageError

    path = tmp_path / "mine.yaml"
    path.write_text("task: countdown\noptim:\n  lr: 1.0e-5\n")
    assert resolve_config(recipe=str(path)).optim.lr == 1e-5
    with pytest.raises(UsageError, match="packaged recipes: dream-7b-espo-countdown"):
        resolve_config(recipe="llada-9b-espo")
