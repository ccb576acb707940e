"""4x4 Sudoku: puzzles with a unique solution, split by solution grid so test grids never appear in train.

d1/wd1/ESPO train and test on puzzles that share solution grids; here each of the 288 grids belongs
to exactly one split. The reward is d1's: the fraction of originally empty cells filled correctly.
"""
from __future__ import annotations

import functools
import itertools
import random
import re
from dataclasses import dataclass

from dllm_rl.task import EvalProtocol, Example, Prompt, Task, TaskConfig, check_style, extract_answer, keyed_random

SIZE = 4
CELLS = SIZE * SIZE
DIGITS = "1234"
NUM_GRIDS = 288



@dataclass
class SudokuConfig(TaskConfig):
    """How the 288 solution grids are split and how many puzzles each grid yields."""

    seed: int = 0
    test_grids: int = 88
    validation_grids: int = 24
    """The remaining 288 - test_grids - validation_grids grids form the train split."""
    train_puzzles_per_grid: int = 50
    eval_puzzles_per_grid: int = 4
    """Puzzles per grid in the validation and test splits."""
    min_blanks: int = 6
    max_blanks: int = 10
    reward: str = "cells"
    """``cells``: d1's reward, the fraction of originally empty cells filled right; ``solved``: 1.0 only
    when the whole grid is right (the puzzle-level metric itself)."""

    def __post_init__(self):
        if self.test_grids < 0 or self.validation_grids < 0 or self.test_grids + self.validation_grids > NUM_GRIDS:
            raise ValueError(f"test_grids + validation_grids must be within 0..{NUM_GRIDS}")
        if not 0 <= self.min_blanks <= self.max_blanks <= CELLS:
            raise ValueError(f"need 0 <= min_blanks <= max_blanks <= {CELLS}")
        if self.reward not in ("cells", "solved"):
            raise ValueError(f"reward must be cells or solved, got {self.reward!r}")


@functools.cache
def _grids() -> tuple[str, ...]:
    """All valid solution grids in lexicographic order, built row by row with column and box checks."""
    rows = ["".join(p) for p in itertools.permutations(DIGITS)]

    def fits(grid: list[str], row: str) -> bool:
        r = len(grid)
        for c in range(SIZE):
            box_rows = grid[r - r % 2 : r]
            box_cols = range(c - c % 2, c - c % 2 + 2)
            if any(g[c] == row[c] for g in grid) or any(g[bc] == row[c] for g in box_rows for bc in box_cols):
                return False
        return True

    def extend(grid: list[str]):
        if len(grid) == SIZE:
            yield "".join(grid)
            return
        for row in rows:
            if fits(grid, row):
                yield from extend(grid + [row])

    return tuple(extend([]))


def all_grids() -> list[str]:
    """All 288 valid 4x4 solution grids as 16-char row-major strings, in lexicographic order."""
    return list(_grids())


@functools.cache
def _masks() -> tuple[tuple[int, ...], ...]:
    """Bitmask over grid indices of the grids holding each digit at each cell: ``_masks()[cell][digit]``."""
    masks = [[0] * (SIZE + 1) for _ in range(CELLS)]
    for i, grid in enumerate(_grids()):
        for cell, digit in enumerate(grid):
            masks[cell][int(digit)] |= 1 << i
    return tuple(tuple(m) for m in masks)


def _consistent(givens: dict[int, int]) -> int:
    """Bitmask of the grids that agree with ``givens`` (cell -> digit)."""
    masks, result = _masks(), (1 << NUM_GRIDS) - 1
    for cell, digit in givens.items():
        result &= masks[cell][digit]
    return result


def _givens(puzzle: str) -> dict[int, int]:
    if len(puzzle) != CELLS or any(ch not in "01234" for ch in puzzle):
        raise ValueError(f"a puzzle is {CELLS} characters of 0-4, got {puzzle!r}")
    return {cell: int(ch) for cell, ch in enumerate(puzzle) if ch != "0"}


def count_solutions(puzzle: str) -> int:
    """Number of valid solution grids that agree with the givens of ``puzzle`` ('0' = empty)."""
    return _consistent(_givens(puzzle)).bit_count()




def make_puzzle(solution: str, rng: random.Random, min_blanks: int, max_blanks: int) -> str:
    """Blank up to a drawn number of cells in random order, skipping any blank that breaks uniqueness."""
    target = rng.randint(min_blanks, max_blanks)
    order = list(range(CELLS))
    rng.shuffle(order)
    givens = {cell: int(d) for cell, d in enumerate(solution)}
    blanks = 0
    for cell in order:
        if blanks == target:
            break
        digit = givens.pop(cell)
        if _consistent(givens).bit_count() == 1:
            blanks += 1
        else:
            givens[cell] = digit
    return "".join(str(givens.get(cell, 0)) for cell in range(CELLS))


@functools.cache
def _units() -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """The 12 units (rows, columns, 2x2 boxes) as cell tuples, and each cell's peers."""
    rows = [tuple(SIZE * r + c for c in range(SIZE)) for r in range(SIZE)]
    cols = [tuple(SIZE * r + c for r in range(SIZE)) for c in range(SIZE)]
    boxes = [tuple(SIZE * (br + r) + bc + c for r in range(2) for c in range(2)) for br in (0, 2) for bc in (0, 2)]
    units = tuple(rows + cols + boxes)
    peers = tuple(tuple(sorted({c for u in units if cell in u for c in u} - {cell})) for cell in range(CELLS))
    return units, peers


def solve_trace(puzzle: str, solution: str) -> list[tuple[int, int]]:
    """The (cell, digit) fills of a human-style solve: the first blank with a single candidate (naked
    single), else the first digit with a single place in a row, column or box (hidden single), else the
    blank with fewest candidates filled with its solution digit (4x4 puzzles rarely need it)."""
    grid = [int(ch) for ch in puzzle]
    units, peers = _units()
    fills: list[tuple[int, int]] = []

    def candidates(cell: int) -> set[int]:
        return set(range(1, SIZE + 1)) - {grid[c] for c in peers[cell]}

    while 0 in grid:
        blanks = [c for c in range(CELLS) if grid[c] == 0]
        move = next(((c, next(iter(candidates(c)))) for c in blanks if len(candidates(c)) == 1), None)
        if move is None:
            for unit in units:
                for digit in range(1, SIZE + 1):
                    places = [c for c in unit if grid[c] == 0 and digit in candidates(c)]
                    if len(places) == 1 and digit not in (grid[c] for c in unit):
                        move = (places[0], digit)
                        break
                if move is not None:
                    break
        if move is None:
            cell = min(blanks, key=lambda c: (len(candidates(c)), c))
            move = (cell, int(solution[cell]))
        grid[move[0]] = move[1]
        fills.append(move)
    return fills


def parse_grid(answer: str | None) -> str | None:
    """The first 16 ASCII digits of an answer (separators and letters dropped); may be shorter than 16."""
    return None if answer is None else "".join(re.findall(r"[0-9]", answer))[:CELLS]



class Sudoku(Task):
    """4x4 Sudoku with a solution-disjoint train/validation/test split."""

    Config = SudokuConfig
    config: SudokuConfig

    def __init__(self, config: SudokuConfig | None = None):
        super().__init__(config)
        self._cache: dict[str, list[Example]] = {}

    def split_grids(self) -> dict[str, list[int]]:
        """Indices into ``all_grids()`` of each split's solution grids; depends only on the seed and sizes."""
        order = list(range(NUM_GRIDS))
        keyed_random(self.config.seed, "split").shuffle(order)
        n_test, n_val = self.config.test_grids, self.config.validation_grids
        return {
            "test": sorted(order[:n_test]),
            "validation": sorted(order[n_test : n_test + n_val]),
            "train": sorted(order[n_test + n_val :]),
        }

    def examples(self, split: str) -> list[Example]:
        """Puzzles ordered puzzle-major (one of every grid, then the next one), so prefixes cover many grids."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(self.splits)}")
        if split not in self._cache:
            self._cache[split] = self._generate(split)
        return list(self._cache[split])

    def _generate(self, split: str) -> list[Example]:
        cfg, grids = self.config, _grids()
        per_grid = cfg.train_puzzles_per_grid if split == "train" else cfg.eval_puzzles_per_grid
        split_grids = self.split_grids()[split]
        seen: set[str] = set()
        out: list[Example] = []
        for p in range(per_grid):
            for g in split_grids:
                rng = keyed_random(cfg.seed, split, g, p)
                puzzle = make_puzzle(grids[g], rng, cfg.min_blanks, cfg.max_blanks)
                if puzzle not in seen:
                    seen.add(puzzle)
                    out.append({"id": f"sudoku-{split}-{len(out)}", "puzzle": puzzle, "solution": grids[g]})
        return out

    def prompt(self, example: Example, style: str) -> Prompt:
        check_style(style)
        puzzle = example["puzzle"]
        if style == "direct":
            return puzzle + "="
        rows = "\n".join(puzzle[r * SIZE : (r + 1) * SIZE] for r in range(SIZE))
        content = (
            "Please solve the following 4x4 Sudoku puzzle. The puzzle is given as a 16-character string "
            "read left to right, top to bottom, where '0' marks an empty cell.\n\n"
            "Rules:\n"
            "- Fill every empty cell with a digit from 1 to 4\n"
            "- Each row must contain the digits 1-4 exactly once\n"
            "- Each column must contain the digits 1-4 exactly once\n"
            "- Each of the four 2x2 boxes must contain the digits 1-4 exactly once\n\n"
            f"Puzzle: {puzzle}\n\nThe same puzzle as 4 rows:\n{rows}\n\n"
            "Think step by step inside <reasoning> </reasoning> tags, then give the complete solved grid as "
            "a 16-character string of digits 1-4 with no spaces inside <answer> </answer> tags:\n"
            "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
        )
        return [{"role": "user", "content": content}]

    def answer(self, completion: str, style: str) -> str | None:
        """The answer text: the last ``<answer>`` block (chat) or the whole completion (direct)."""
        return extract_answer(completion, style)

    def reward(self, example: Example, completion: str, style: str) -> float:
        """The configured reward: cell fraction (d1) or 1.0 for a solved puzzle; 0.0 without an answer."""
        if self.config.reward == "solved":
            return self.solved(example, completion, style)
        return self.cell_fraction(example, completion, style)

    def solved(self, example: Example, completion: str, style: str) -> float:
        """1.0 when the answer is the whole solution grid, else 0.0."""
        return float(parse_grid(self.answer(completion, style)) == example["solution"])

    def cell_fraction(self, example: Example, completion: str, style: str) -> float:
        """Fraction of originally empty cells filled with the right digit; 0.0 without an answer."""
        grid = parse_grid(self.answer(completion, style))
        if grid is None:
            return 0.0
        blanks = [cell for cell, ch in enumerate(example["puzzle"]) if ch == "0"]
        if not blanks:
            return 1.0
        solution = example["solution"]
        return sum(cell < len(grid) and grid[cell] == solution[cell] for cell in blanks) / len(blanks)

    def score(self, example: Example, completion: str, style: str) -> dict[str, float]:
        """Puzzle-level accuracy (all 16 cells right) and cell-level accuracy (the reward, what papers report)."""
        return {
            "accuracy": self.solved(example, completion, style),
            "cell_accuracy": self.cell_fraction(example, completion, style),
        }

    def protocol(self, style: str) -> EvalProtocol:
        check_style(style)
        lengths = (24,) if style == "direct" else (256, 128, 512)
        return EvalProtocol(lengths=lengths, primary_metric="accuracy")

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        solution = example["solution"]
        if style == "direct":
            return solution
        reasoning = "Fill each empty cell so every row, column and 2x2 box holds 1, 2, 3 and 4 exactly once."
        return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>{solution}</answer>"


@dataclass
class SudokuTraceConfig(SudokuConfig):
    """Sudoku settings plus the trace layout."""

    pad_trace: bool = True
    """Pad the trace with ``..`` entries to ``max_blanks`` fills, so the grid always starts at the same
    position: a tiny model learns a fixed layout far faster than one that moves with the blank count."""


class SudokuTrace(Sudoku):
    """Sudoku with a reasoning trace before the answer: the direct-style completion lists the fills of
    a human-style solve as ``<cell in hex><digit>`` pairs, then ``|`` and the 16-digit grid (up to 46
    characters, generated at L=48), so the sequence likelihood covers a reasoning-length completion.
    Only the grid after the last ``|`` is scored; the trace itself earns nothing."""

    Config = SudokuTraceConfig
    config: SudokuTraceConfig
    SEPARATOR = "|"
    PAD = ".."

    def answer(self, completion: str, style: str) -> str | None:
        if style == "direct":
            return completion.rsplit(self.SEPARATOR, 1)[1] if self.SEPARATOR in completion else None
        return super().answer(completion, style)

    def trace(self, example: Example) -> str:
        fills = [f"{cell:x}{digit}" for cell, digit in solve_trace(example["puzzle"], example["solution"])]
        if self.config.pad_trace:
            fills += [self.PAD] * (self.config.max_blanks - len(fills))
        return " ".join(fills)

    def reference(self, example: Example, style: str) -> str:
        check_style(style)
        if style == "direct":
            return f"{self.trace(example)}{self.SEPARATOR}{example['solution']}"
        return f"<reasoning>\n{self.trace(example)}\n</reasoning>\n<answer>{example['solution']}</answer>"

    def protocol(self, style: str) -> EvalProtocol:
        check_style(style)
        return EvalProtocol(lengths=(48,), primary_metric="accuracy") if style == "direct" else super().protocol(style)
