"""Toy text environments, deterministic by seed, each with scripted optimal and random policies (rcl.tasks.envs.base):
`bandit` (one turn), `grid` (BabyAI-like navigation), `craft` (TextCraft-like crafting), `shop` (WebShop-like search and
click). Importing this package registers them."""

from rcl.tasks.envs import bandit, craft, grid, shop  # noqa: F401  (registers the environments)
