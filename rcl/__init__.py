"""rcl: Reinforced Continual Learning for adaptive teacher language models."""

__version__ = "0.1.0"
