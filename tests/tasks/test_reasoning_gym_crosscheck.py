"""Our Sudoku and Countdown generators and rewards against reasoning-gym's, an independent implementation.

reasoning-gym (PyPI, test extra) generates 4x4 Sudoku and Countdown problems with its own solvers and
verifiers. Each side must accept the other's problems and solutions, and the two verdicts must agree on
wrong answers, up to documented differences of scale (its Sudoku score counts given cells and scales a
non-canonical format by 0.9; its Countdown scores are 1.0 / 0.05 / 0.01 where d1's are 1.0 / 0.1 / 0.0).
Every string handed to reasoning-gym is built here (it parses with sympy, which evaluates text).
"""
import random

import pytest
from reasoning_gym.games.countdown import CountdownConfig as GymCountdownConfig
from reasoning_gym.games.countdown import CountdownDataset
from reasoning_gym.games.mini_sudoku import MiniSudokuConfig, MiniSudokuDataset

from dllm_rl import registry
from dllm_rl.tasks.countdown import Countdown, CountdownConfig, _random_expression, verdict
from dllm_rl.tasks.sudoku import Sudoku, all_grids, count_solutions

# The tiny model's Countdown problems, as registry.yaml's presets set them.
TINY_COUNTDOWN = {key.removeprefix("task."): value for preset in registry.presets("tiny", "countdown", "espo")
                  for key, value in preset.items() if key.startswith("task.")}


def _board(grid: str) -> list[list[int]]:
    return [[int(ch) for ch in grid[4 * r : 4 * r + 4]] for r in range(4)]


def _flat(board: list[list[int]]) -> str:
    return "".join(str(x) for row in board for x in row)


def _gym_format(grid: str) -> str:
    """reasoning-gym's answer format: digits separated by spaces, one row per line."""
    return "\n".join(" ".join(grid[4 * r : 4 * r + 4]) for r in range(4))


@pytest.fixture(scope="module")
def gym_sudoku():
    data = MiniSudokuDataset(MiniSudokuConfig(min_empty=6, max_empty=10, seed=11, size=150))
    return data, [data[i] for i in range(len(data))]


def test_gym_sudoku_solutions_are_among_our_288_grids_and_its_puzzles_unique_for_us(gym_sudoku):
    _, items = gym_sudoku
    grids = set(all_grids())
    for item in items:
        assert _flat(item["metadata"]["solution"]) in grids
        assert count_solutions(_flat(item["metadata"]["puzzle"])) == 1


def test_our_test_puzzles_have_one_solution_by_gym_solver_and_it_is_ours(gym_sudoku):
    data, _ = gym_sudoku
    for example in Sudoku().examples("test"):
        board = _board(example["puzzle"])
        assert data._count_solutions([row[:] for row in board], limit=2) == 1
        assert data._solve(board) and _flat(board) == example["solution"]


def test_sudoku_rewards_agree_on_gym_puzzles_with_wrong_cells(gym_sudoku):
    """Ours counts the blanks filled right; reasoning-gym counts all 16 cells, x0.9 off its own format."""
    data, items = gym_sudoku
    task, rng = Sudoku(), random.Random(0)
    for item in items:
        puzzle, solution = _flat(item["metadata"]["puzzle"]), _flat(item["metadata"]["solution"])
        example = {"id": "gym", "puzzle": puzzle, "solution": solution}
        blanks = [cell for cell, ch in enumerate(puzzle) if ch == "0"]
        assert task.score(example, item["answer"], "direct") == {"accuracy": 1.0, "cell_accuracy": 1.0}
        assert task.reward(example, f"<answer>{solution}</answer>", "chat") == 1.0
        assert data.score_answer(_gym_format(solution), item) == 1.0

        wrong = rng.sample(blanks, rng.randint(1, len(blanks)))
        answer = list(solution)
        for cell in wrong:
            answer[cell] = rng.choice([d for d in "1234" if d != solution[cell]])
        answer = "".join(answer)
        ours = task.cell_fraction(example, answer, "direct")
        assert ours == pytest.approx((len(blanks) - len(wrong)) / len(blanks))
        assert task.solved(example, answer, "direct") == 0.0
        gym = data.score_answer(_gym_format(answer), item)
        assert gym < 1.0
        assert gym / 0.9 * 16 == pytest.approx(16 - len(blanks) * (1 - ours))


GYM_SCORE = {"solved": 1.0, "wrong_numbers": 0.05, "wrong_value": 0.05, "no_expression": 0.01}


def test_gym_countdown_solutions_solve_our_task():
    data = CountdownDataset(
        GymCountdownConfig(min_numbers=3, max_numbers=3, min_value=1, max_value=9, min_target=1, max_target=50, seed=5, size=200)
    )
    task = Countdown(CountdownConfig())
    for i in range(len(data)):
        item = data[i]
        example = {"id": "gym", "numbers": item["metadata"]["numbers"], "target": item["metadata"]["target"]}
        assert verdict(example, item["answer"]) == "solved", item["answer"]
        assert task.reward(example, f"<reasoning>x</reasoning><answer>{item['answer']}</answer>", "chat") == 1.0


def test_countdown_verdicts_agree_with_gym_on_our_problems_and_perturbed_answers():
    task = Countdown(CountdownConfig(**TINY_COUNTDOWN))
    scorer = CountdownDataset(GymCountdownConfig(seed=0, size=1))
    rng = random.Random(0)
    seen = set()
    for example in task.examples("test")[:150]:
        entry = {"metadata": {"numbers": example["numbers"], "target": example["target"]}}
        assert scorer.score_answer(example["solution"], entry) == 1.0
        numbers = list(example["numbers"])
        candidates = [example["solution"], "", "3+", "((2)", "2 3", "9/(3-3)"]
        for _ in range(4):
            used = rng.sample(numbers, len(numbers))
            if rng.random() < 0.3:
                used[rng.randrange(len(used))] = rng.randint(1, 12)
            try:
                candidates.append(_random_expression(rng, used, "+-*/")[1])
            except ValueError:  # division by zero while building: keep the text-level cases above
                pass
        for text in candidates:
            ours = verdict(example, text)
            seen.add(ours)
            assert GYM_SCORE[ours] == scorer.score_answer(text, entry), (text, example)
    assert seen == set(GYM_SCORE)
