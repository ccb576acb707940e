"""Built-in tasks, one module each (installed as ``dllm_rl.tasks``)."""
