"""The one place rcl adapts to transformers API renames, so the rest of the code reads the same on every tested
version."""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def _cache_argument(model_class: type) -> str:
    # transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name still works, with a warning).
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for `model(...)`, under the name this transformers version's forward takes. `model` may be
    wrapped by Fabric. The cache is updated in place by the forward, so callers keep using their own object."""
    inner = getattr(model, "_forward_module", model)
    if hasattr(inner, "get_base_model"):  # a peft model forwards the cache to its base model's forward
        inner = inner.get_base_model()
    return {_cache_argument(type(inner)): cache}
