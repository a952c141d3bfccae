"""A hardened local sandbox for model-written programs. See rcl.sandbox.sandbox (and the README's Sandbox section)."""

from rcl.sandbox.config import OUTCOMES, LanguageSpec, Outcome, SandboxConfig
from rcl.sandbox.sandbox import RunResult, Sandbox, SandboxUnavailable, outputs_match, shared_sandbox

__all__ = [
    "OUTCOMES",
    "LanguageSpec",
    "Outcome",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "SandboxUnavailable",
    "outputs_match",
    "shared_sandbox",
]
