"""dllm-rl: RL post-training and evaluation of masked diffusion language models."""
from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout the plugin folders algorithms/ and tasks/ sit beside dllm_rl/ and are
# installed as dllm_rl.algorithms / dllm_rl.tasks; make the same names resolve when the checkout
# itself is on sys.path (an installed package has them inside and skips this).
_here = _Path(__file__).resolve().parent
if not (_here / "algorithms").is_dir() and (_here.parent / "algorithms" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 (package __path__)
