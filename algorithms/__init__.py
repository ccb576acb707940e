"""Built-in RL objectives, one small module each (installed as ``dllm_rl.algorithms``)."""
