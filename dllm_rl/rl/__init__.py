"""Shared RL pieces: rollouts, advantages, KL estimators, clipped surrogates, the algorithm contract."""
