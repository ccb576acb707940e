"""lm-eval's own command line with the ``dllm-rl`` model registered: ``python -m dllm_rl.lm_eval_cli
ARGS`` (or ``dllm-rl lm-eval ARGS``) is ``lm-eval ARGS`` with ``--model dllm-rl`` available. lm-eval
0.4 finds models only among the modules it imports (it reads no plugin entry points), so this imports
the adapter first and then hands the arguments to lm-eval unchanged."""
from __future__ import annotations

import logging
import sys

from .errors import UsageError


def run(argv: list[str]) -> None:
    """Register the adapter, then run lm-eval's command line on ``argv``; bad input raises UsageError."""
    try:
        from lm_eval.__main__ import cli_evaluate
        from lm_eval.utils import setup_logging

        from . import lm_eval_adapter  # noqa: F401  (registers the "dllm-rl" model with lm-eval)
    except ModuleNotFoundError as exc:
        raise UsageError(f"dllm-rl lm-eval needs the lm-eval package ({exc}); install it with pip install 'dllm-rl[lm-eval]'") from None
    setup_logging()  # lm-eval's own log handler, shared so the adapter's Monte-Carlo summary shows too
    ours, theirs = logging.getLogger("dllm_rl"), logging.getLogger("lm_eval")
    level, added = ours.level, [h for h in theirs.handlers if h not in ours.handlers]
    ours.setLevel(theirs.level)
    for handler in added:
        ours.addHandler(handler)
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # lm-eval's parser reads (and edits) sys.argv itself
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
        for handler in added:
            ours.removeHandler(handler)
        ours.setLevel(level)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m dllm_rl.lm_eval_cli``: bad input is one line and exit code 2."""
    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
