"""4x4 Sudoku task: grid enumeration, leak-free splits, unique puzzles and the d1 cell reward."""
import pytest

from dllm_rl.task import EvalProtocol
from dllm_rl.tasks.sudoku import Sudoku, SudokuConfig, all_grids, count_solutions

# Hand-checked puzzle: solution rows 1234 / 3412 / 2143 / 4321, eight blanks at cells
# 2, 3, 4, 6, 7, 9, 11, 14 whose correct digits are 3, 4, 3, 1, 2, 1, 3, 2.
SOLUTION = "1234341221434321"
EXAMPLE = {"id": "sudoku-test-x", "puzzle": "1200040020404301", "solution": SOLUTION}


@pytest.fixture(scope="module")
def task():
    return Sudoku()


def _units(grid):
    rows = [[grid[4 * r + c] for c in range(4)] for r in range(4)]
    cols = [[grid[4 * r + c] for r in range(4)] for c in range(4)]
    boxes = [[grid[4 * (br + r) + bc + c] for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]
    return rows + cols + boxes


def test_all_grids_are_the_288_distinct_valid_grids():
    grids = all_grids()
    assert len(grids) == 288 and len(set(grids)) == 288
    for grid in grids:
        assert len(grid) == 16
        assert all(sorted(unit) == ["1", "2", "3", "4"] for unit in _units(grid))


def test_count_solutions_on_hand_checked_puzzles():
    assert count_solutions(SOLUTION) == 1
    assert count_solutions(EXAMPLE["puzzle"]) == 1
    assert count_solutions("0" * 16) == 288
    assert count_solutions("1100000000000000") == 0  # two 1s in a row
    # Blanking the 1/2 rectangle in rows 0 and 2 lets 1 and 2 swap: 2134/3412/1243/4321 also solves it.
    assert count_solutions("0034341200434321") == 2
    with pytest.raises(ValueError):
        count_solutions("123")


def test_splits_are_disjoint_by_solution_grid(task):
    split = task.split_grids()
    assert {name: len(idx) for name, idx in split.items()} == {"test": 88, "validation": 24, "train": 176}
    assert sorted(split["test"] + split["validation"] + split["train"]) == list(range(288))
    grids = all_grids()
    solutions = {name: {ex["solution"] for ex in task.examples(name)} for name in task.splits}
    for name in task.splits:
        assert solutions[name] == {grids[i] for i in split[name]}
    assert not solutions["train"] & (solutions["test"] | solutions["validation"])
    assert not solutions["test"] & solutions["validation"]


def test_every_puzzle_is_unique_solvable_and_consistent(task):
    cfg = task.config
    for name in task.splits:
        examples = task.examples(name)
        assert [ex["id"] for ex in examples] == [f"sudoku-{name}-{n}" for n in range(len(examples))]
        assert len({ex["puzzle"] for ex in examples}) == len(examples)
        for ex in examples:
            puzzle, solution = ex["puzzle"], ex["solution"]
            assert count_solutions(puzzle) == 1
            assert all(p in ("0", s) for p, s in zip(puzzle, solution))
            assert cfg.min_blanks <= puzzle.count("0") <= cfg.max_blanks
    assert len(task.examples("test")) == 88 * 4
    # 176 grids x 50 draws, minus a few duplicate draws of the same grid.
    assert 8000 < len(task.examples("train")) <= 176 * 50


def test_generation_is_deterministic_and_seeded():
    small = dict(train_puzzles_per_grid=2)
    first, second = Sudoku(SudokuConfig(**small)), Sudoku(SudokuConfig(**small))
    for name in first.splits:
        assert first.examples(name) == second.examples(name)
    other = Sudoku(SudokuConfig(seed=1, **small))
    assert other.split_grids() != first.split_grids()
    # Test puzzles do not depend on how many train puzzles are drawn.
    assert Sudoku(SudokuConfig(train_puzzles_per_grid=7)).examples("test") == first.examples("test")


def chat(answer_text):
    return f"<reasoning>rows and columns</reasoning>\n<answer>{answer_text}</answer>"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (chat(SOLUTION), 1.0),
        (chat("2234341221434321"), 1.0),  # a given changed (cell 0), every blank right: only blanks count
        (chat("2200341221434321"), 6 / 8),  # cells 2 and 3 blanked again: two of eight blanks wrong
        (chat("\n1234\n3412\n2143\n4321\n"), 1.0),  # multi-line answer needs DOTALL
        (chat("1 2 3 4 3 4 1 2 2 1 4 3 4 3 2 1"), 1.0),
        (chat("12a34b341x221434321"), 1.0),  # letters are dropped
        (chat("12343412"), 5 / 8),  # only the first 8 cells: blanks 2,3,4,6,7 right, 9,11,14 missing
        (chat("1234341221434321999"), 1.0),  # the grid is the first 16 digits
        (chat("1111111111111111"), 2 / 8),  # blanks 6 and 9 hold a 1
        (chat("1111111111111111") + chat(SOLUTION), 1.0),  # the last answer wins
        (chat(SOLUTION) + chat("1111111111111111"), 2 / 8),
        (SOLUTION, 0.0),  # chat style without a tag
        ("<answer>" + SOLUTION, 0.0),  # unclosed tag
        (chat(""), 0.0),
    ],
)
def test_chat_reward_on_tricky_answers(completion, expected):
    assert Sudoku().reward(EXAMPLE, completion, "chat") == pytest.approx(expected)


def test_direct_reward_reads_the_completion_itself():
    task = Sudoku()
    assert task.reward(EXAMPLE, SOLUTION, "direct") == 1.0
    assert task.reward(EXAMPLE, "1234 3412 2143 4321", "direct") == 1.0
    assert task.reward(EXAMPLE, "1200040020404301", "direct") == 0.0  # the puzzle copied back
    assert task.reward(EXAMPLE, "", "direct") == 0.0


def test_score_separates_puzzle_and_cell_accuracy():
    task = Sudoku()
    assert task.score(EXAMPLE, chat(SOLUTION), "chat") == {"accuracy": 1.0, "cell_accuracy": 1.0}
    assert task.score(EXAMPLE, chat("12343412"), "chat") == {"accuracy": 0.0, "cell_accuracy": 5 / 8}
    assert task.score(EXAMPLE, chat("2234341221434321"), "chat") == {"accuracy": 0.0, "cell_accuracy": 1.0}


def test_prompts_protocols_and_references(task):
    assert task.prompt(EXAMPLE, "direct") == "1200040020404301="
    (message,) = task.prompt(EXAMPLE, "chat")
    assert message["role"] == "user"
    for text in ("1200040020404301", "1200\n0400\n2040\n4301", "<reasoning>", "<answer>", "2x2"):
        assert text in message["content"]
    with pytest.raises(ValueError, match="direct, chat"):
        task.prompt(EXAMPLE, "fewshot")
    assert task.protocol("direct") == EvalProtocol(lengths=(24,), primary_metric="accuracy")
    assert task.protocol("chat") == EvalProtocol(lengths=(256, 128, 512), primary_metric="accuracy")
    for ex in task.examples("validation"):
        for style in ("direct", "chat"):
            assert task.score(ex, task.reference(ex, style), style) == {"accuracy": 1.0, "cell_accuracy": 1.0}
    assert task.reference(EXAMPLE, "direct") == SOLUTION


def test_config_rejects_impossible_splits():
    with pytest.raises(ValueError):
        SudokuConfig(test_grids=200, validation_grids=100)
    with pytest.raises(ValueError):
        SudokuConfig(min_blanks=11, max_blanks=10)


def test_solved_reward_is_the_puzzle_level_metric():
    task = Sudoku(SudokuConfig(reward="solved"))
    assert task.reward(EXAMPLE, chat(SOLUTION), "chat") == 1.0
    assert task.reward(EXAMPLE, chat("2234341221434321"), "chat") == 0.0  # every blank right, a given changed
    assert task.reward(EXAMPLE, chat("12343412"), "chat") == 0.0
    assert task.reward(EXAMPLE, SOLUTION, "direct") == 1.0
    # scores do not depend on the training reward
    assert task.score(EXAMPLE, chat("12343412"), "chat") == {"accuracy": 0.0, "cell_accuracy": 5 / 8}
    with pytest.raises(ValueError, match="cells or solved"):
        SudokuConfig(reward="puzzle")


def test_solve_trace_fills_forced_cells_in_order():
    from dllm_rl.tasks.sudoku import solve_trace

    # EXAMPLE's blanks 2, 3, 4, 6, 7, 9, 11, 14. Cell 2 (row 0 has 1, 2; column 2 has 4; box has 1, 2)
    # has the single candidate 3: the first naked single in cell order.
    fills = solve_trace(EXAMPLE["puzzle"], SOLUTION)
    assert fills[0] == (2, 3)
    assert sorted(fills) == [(2, 3), (3, 4), (4, 3), (6, 1), (7, 2), (9, 1), (11, 3), (14, 2)]
    assert solve_trace(SOLUTION, SOLUTION) == []


def test_trace_task_scores_only_the_grid_after_the_separator():
    from dllm_rl.tasks.sudoku import SudokuTrace

    task = SudokuTrace(SudokuTrace.Config(pad_trace=False))
    ref = task.reference(EXAMPLE, "direct")
    trace, grid = ref.split("|")
    assert grid == SOLUTION and trace.startswith("23 ") and len(trace.split()) == 8
    assert task.score(EXAMPLE, ref, "direct") == {"accuracy": 1.0, "cell_accuracy": 1.0}
    assert task.reward(EXAMPLE, SOLUTION, "direct") == 0.0  # no separator: no answer
    assert task.reward(EXAMPLE, "23 34|1111111111111111", "direct") == pytest.approx(2 / 8)  # trace digits not read
    assert task.reward(EXAMPLE, "|1111|" + SOLUTION, "direct") == 1.0  # the last separator wins
    assert task.protocol("direct") == EvalProtocol(lengths=(48,), primary_metric="accuracy")
    assert max(len(task.reference(ex, "direct")) for ex in task.examples("train")) <= 48
    assert task.score(EXAMPLE, task.reference(EXAMPLE, "chat"), "chat")["accuracy"] == 1.0
    assert task.examples("test") == Sudoku().examples("test")  # same puzzles and split as sudoku


def test_padded_trace_puts_the_grid_at_one_position():
    from dllm_rl.tasks.sudoku import SudokuTrace

    task = SudokuTrace()  # pad_trace is the default
    ref = task.reference(EXAMPLE, "direct")
    assert ref.split("|")[0].split()[8:] == ["..", ".."]  # 8 fills, padded to max_blanks = 10
    assert task.score(EXAMPLE, ref, "direct") == {"accuracy": 1.0, "cell_accuracy": 1.0}
    refs = [task.reference(ex, "direct") for ex in task.examples("validation")]
    assert {r.index("|") for r in refs} == {3 * 10 - 1} and max(map(len, refs)) <= 48
