"""Stand-in for `python -m rcl fit` in launcher tests: generate once on every server it was given, record the result.

Usage: python tests/fake_trainer.py OUT_JSON [MODEL_DIR] [--sleep] <the fit arguments the launcher passes>
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

from transformers import AutoTokenizer

from rcl.engines import SamplingParams
from rcl.serving.client import ServerEngine


def main() -> None:
    out, model_dir, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    args = dict(zip(rest[::2], rest[1::2]))
    tok = AutoTokenizer.from_pretrained(model_dir)
    record = {"argv": rest, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    for role in ("teacher", "student"):
        urls = json.loads(args.get(f"--engines.{role}.urls", "[]"))
        if urls:
            engine = ServerEngine(urls, tok, health_timeout_s=10)
            out_ids = engine.generate([[5, 6, 7]] * len(urls), SamplingParams(max_tokens=3, n=2))
            record[role] = {"urls": urls, "completions": [[c.token_ids for c in g] for g in out_ids]}
    Path(out).write_text(json.dumps(record))
    if "--sleep" in os.environ.get("FAKE_TRAINER_MODE", ""):
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        deadline = time.monotonic() + 600
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        # like the real loop: finish the step (taking a while, and using the servers), save, exit 128 + SIGTERM
        time.sleep(2.0)
        urls = json.loads(args.get("--engines.teacher.urls", "[]"))
        done = ServerEngine(urls, tok, health_timeout_s=10).generate([[5, 6, 7]], SamplingParams(max_tokens=2, n=1))
        Path(out + ".stopped").write_text(json.dumps({"generated_after_sigterm": len(done)}))
        sys.exit(143)


if __name__ == "__main__":
    main()
