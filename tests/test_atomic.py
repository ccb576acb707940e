"""Failed writes are told apart and named: an errno when the writer gives one (Python's OSError, the
"(os error N)" of safetensors' Rust I/O errors), a best guess only for writers that give none."""
import errno
from pathlib import Path

import pytest

from dllm_rl.atomic import reporting_write_errors, write_failure
from dllm_rl.errors import OutputError


class SafetensorError(Exception):
    """Stands in for safetensors' own exception type (not an OSError)."""


@pytest.mark.parametrize("exc, expected", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "no space left on the device"),
    (OSError(errno.EFBIG, "File too large"), "file too large"),
    (OSError(errno.EACCES, "Permission denied"), "Permission denied"),
    (SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"), "Permission denied"),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), "no space left"),
    (SafetensorError("Error while serializing: I/O error: File too large (os error 27)"), "file too large"),
    (RuntimeError("shape mismatch in pos error table"), None),  # not a write failure: raised as it is
    (ValueError("bad value"), None),
])
def test_write_failures_are_classified_by_errno_first(tmp_path, exc, expected):
    why = write_failure(exc, tmp_path / "x")
    assert (why is None) if expected is None else (expected in why), why


def test_a_failed_write_is_one_line_and_other_errors_pass_through(tmp_path):
    with pytest.raises(OutputError, match=r"could not write '.*x' \(no space left on the device\); the step-2 checkpoint"):
        with reporting_write_errors(tmp_path / "x", lambda: "the step-2 checkpoint is intact"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(KeyError):
        with reporting_write_errors(Path(tmp_path / "x")):
            raise KeyError("not a write")
