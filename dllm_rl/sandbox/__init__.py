"""Sandboxed execution of untrusted code (model-written programs) against trusted tests.

``Sandbox(limits).map(jobs)`` runs each :class:`Job` in its own pair of processes and returns one
:class:`Verdict` per job; see ``runner`` for the verdict rules and ``isolation`` for the layers."""
from .isolation import Isolation, probe
from .runner import Job, Limits, RootRefused, Sandbox, Verdict, WeakIsolation

__all__ = ["Isolation", "Job", "Limits", "RootRefused", "Sandbox", "Verdict", "WeakIsolation", "probe"]
