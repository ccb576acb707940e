"""A code task whose sandbox refuses to start (no containment, or programs that would run as host root)
stops with one line naming the way out, not a traceback."""
import pytest

from dllm_rl.errors import UsageError
from dllm_rl.sandbox import RootRefused, Sandbox, WeakIsolation
from dllm_rl.tasks.humaneval import HumanEval


@pytest.mark.parametrize("error, hint", [(RootRefused("programs would run as uid 0 of the host; DLLM_RL_SANDBOX_ALLOW_ROOT=1"),
                                          "DLLM_RL_SANDBOX_ALLOW_ROOT"),
                                         (WeakIsolation("no containment here"), "allow_weak_isolation")])
def test_a_refused_sandbox_is_one_usage_error(monkeypatch, error, hint):
    def refuse(self):
        raise error

    monkeypatch.setattr(Sandbox, "isolation", property(refuse))
    with pytest.raises(UsageError, match=hint) as exc:
        HumanEval().sandbox
    assert "\n" not in str(exc.value)
