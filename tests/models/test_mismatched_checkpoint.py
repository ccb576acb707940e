"""A checkpoint with a tensor of the wrong shape is the documented one-line error naming the tensor and
both shapes (exit code 2 from the CLI), not a library traceback or a silently re-initialised weight."""
import contextlib
import io
import shutil

import pytest
from safetensors.torch import load_file, save_file

from dllm_rl.cli import main
from dllm_rl.config import ModelConfig, RunConfig
from dllm_rl.errors import UsageError
from dllm_rl.pipeline import load_model

TENSOR = {"llada": "model.transformer.blocks.0.attn_out.weight", "dream": "model.layers.0.mlp.down_proj.weight"}


def truncated_copy(checkpoints, family, tmp_path):
    """A copy of the family's tiny checkpoint with one row cut off one tensor; returns (folder, model shape)."""
    folder = tmp_path / f"bad-{family}"
    shutil.copytree(checkpoints[family], folder)
    tensors = load_file(str(folder / "model.safetensors"))
    shape = list(tensors[TENSOR[family]].shape)
    tensors[TENSOR[family]] = tensors[TENSOR[family]][:-1].contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder, shape


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_mis_shaped_tensor_is_one_line_naming_it(checkpoints, family, tmp_path):
    folder, shape = truncated_copy(checkpoints, family, tmp_path)
    found = [shape[0] - 1, *shape[1:]]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", str(folder), "--task", "sudoku"])
    assert exc.value.code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    assert TENSOR[family] in lines[0] and str(found) in lines[0] and str(shape) in lines[0]
    with pytest.raises(UsageError, match=f"{TENSOR[family]}.*{found}.*{shape}".replace("[", r"\[").replace("]", r"\]")):
        load_model(RunConfig(model=ModelConfig(name=str(folder))), None)
