"""Example dllm-rl plugin package (see README: adding an algorithm or a task)."""
