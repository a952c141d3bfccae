"""The math-verify helper process (`python -m rcl.tasks.symbolic_helper`), driven by
`rcl.tasks.answer_check.SymbolicChecker`: JSON lines `[pred, gold, relations]` in, one JSON verdict per line out
(`{"equal": bool}` or `{"error": message}`); the optional third item lets relations equal sets. Kept out of the package's imports so `-m` runs it cleanly."""

from __future__ import annotations

import json
import logging
import os
import sys


def _symbolic(pred: str, gold: str, relations: bool = False) -> dict:
    """math-verify's verdict on two bare answers (run inside the helper process)."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=None)
        if not gold_parsed:
            return {"error": f"math-verify cannot parse the reference {gold!r}"}
        pred_parsed = parse(f"${pred}$", parsing_timeout=None)
        if not pred_parsed:
            return {"equal": False}
        return {"equal": bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=True,
                                     allow_set_relation_comp=relations))}
    except Exception as err:  # noqa: BLE001 - any failure inside math-verify is a verifier error, reported as such
        return {"error": f"math-verify raised {type(err).__name__}: {str(err)[:200]}"}


def _serve() -> None:
    """Answer requests until stdin closes."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to stderr, never into the protocol
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    import math_verify  # noqa: F401  (imported before "ready", so timeouts only cover verification)

    print("ready", file=protocol, flush=True)
    for line in sys.stdin:
        print(json.dumps(_symbolic(*json.loads(line))), file=protocol, flush=True)


if __name__ == "__main__":
    _serve()
