"""Benchmarks: rcl GRPO vs TRL, adaptive-teaching rollout cost, generation engine and weight sync (see README.md)."""
