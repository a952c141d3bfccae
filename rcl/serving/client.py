"""`ServerEngine`: the `GenerationEngine` interface over a pool of rcl (or TRL vllm-serve) generation servers.

Prompts are split into contiguous chunks, one per server, sent concurrently; each prompt travels once with `n`.
Transient failures (connection errors, 502/503/504) are retried with exponential backoff; a server that stays down
raises `ServerError` naming its URL. Weights are pushed over HTTP as safetensors buckets to every server of the pool.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from rcl.engines import Completion, SamplingParams, trim_completion
from rcl.serving.protocol import SAFETENSORS_MEDIA_TYPE, sampling_fields
from rcl.serving.weights import NamedTensor, bucketize, encode_bucket

API_KEY_ENV = "RCL_API_KEY"
T = TypeVar("T")


class ServerError(RuntimeError):
    """A generation server is unreachable or refused a request; the message names the server."""


def _session(api_key: str | None, retries: int) -> requests.Session:
    session = requests.Session()
    retry = Retry(
        total=retries,
        connect=retries,
        read=0,  # a read timeout means the server is busy generating: resending would queue the work twice
        backoff_factor=0.5,
        status_forcelist=(502, 503, 504),
        allowed_methods=None,  # retry POSTs too: generation and bucket loads are idempotent
        raise_on_status=False,
    )
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    return session


def split_evenly(items: Sequence[T], parts: int) -> list[list[T]]:
    """Contiguous chunks whose sizes differ by at most one, in order; empty chunks for parts > len(items)."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return out


class ServerEngine:
    """Generate on, and push weights to, a pool of servers that all serve the same model."""

    def __init__(
        self,
        urls: list[str],
        tokenizer: Any,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        health_timeout_s: float = 240.0,
        retries: int = 3,
    ):
        if not urls:
            raise ValueError("ServerEngine needs at least one server URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.tokenizer = tokenizer
        self.timeout_s = timeout_s
        self.health_timeout_s = health_timeout_s
        api_key = api_key or os.environ.get(API_KEY_ENV) or None
        self._sessions = {url: _session(api_key, retries) for url in self.urls}
        self._pool = ThreadPoolExecutor(max_workers=len(self.urls), thread_name_prefix="rcl-client")
        self._healthy = False

    # -- plumbing -------------------------------------------------------------------------------------------------
    def _request(self, url: str, method: str, path: str, **kwargs: Any) -> dict:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            response = self._sessions[url].request(method, f"{url}{path}", **kwargs)
        except requests.RequestException as exc:
            raise ServerError(f"generation server {url} is unreachable ({method} {path}): {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ServerError(f"generation server {url} answered {response.status_code} to {path}: {detail}")
        return response.json()

    def _on_all(self, fn: Callable[[str], T], urls: Sequence[str] | None = None) -> list[T]:
        """Run `fn(url)` for every server concurrently; results in URL order; the first failure is raised."""
        futures = [self._pool.submit(fn, url) for url in (urls or self.urls)]
        return [f.result() for f in futures]

    def wait_until_healthy(self) -> None:
        """Poll every server's /health/ until it answers or `health_timeout_s` passes."""
        if self._healthy:
            return
        deadline = time.monotonic() + self.health_timeout_s

        def wait(url: str) -> None:
            while True:
                try:
                    self._sessions[url].get(f"{url}/health/", timeout=5.0).raise_for_status()
                    return
                except requests.RequestException as exc:
                    if time.monotonic() > deadline:
                        raise ServerError(
                            f"generation server {url} not healthy after {self.health_timeout_s:.0f} s: {exc}"
                        ) from exc
                    time.sleep(0.5)

        self._on_all(wait)
        self._healthy = True

    # -- generation -----------------------------------------------------------------------------------------------
    def _completions(self, body: dict, n_prompts: int, params: SamplingParams) -> list[list[Completion]]:
        ids = body["completion_ids"]
        if len(ids) != n_prompts * params.n:
            raise ServerError(f"server returned {len(ids)} completions for {n_prompts} prompts x n={params.n}")
        logprobs = body.get("logprobs")
        reasons = body.get("finish_reasons")
        rows = []
        for i, tokens in enumerate(ids):
            lps = None
            if logprobs is not None:  # TRL >= 1.0 nests one list per token (top-k); older servers send floats
                lps = [lp[0] if isinstance(lp, list) else lp for lp in logprobs[i]]
            if reasons is None:  # a TRL server: infer the reason from the stop ids, as HFEngine does
                rows.append(trim_completion(tokens, lps, self.tokenizer, params))
            else:
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                rows.append(Completion(list(tokens), lps, reasons[i], text))
        return [rows[i * params.n : (i + 1) * params.n] for i in range(n_prompts)]

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        self.wait_until_healthy()
        chunks = split_evenly([list(p) for p in prompts], len(self.urls))
        busy = [(url, chunk) for url, chunk in zip(self.urls, chunks) if chunk]

        def run(item: tuple[str, list[list[int]]]) -> list[list[Completion]]:
            url, chunk = item
            payload = dict(prompts=chunk, logprobs=0, **sampling_fields(params))
            body = self._request(url, "POST", "/generate/", json=payload)
            return self._completions(body, len(chunk), params)

        futures = [self._pool.submit(run, item) for item in busy]
        return [group for f in futures for group in f.result()]

    # -- weights --------------------------------------------------------------------------------------------------
    def weights_versions(self) -> list[int]:
        return self._on_all(lambda url: int(self._request(url, "GET", "/weights_version/")["weights_version"]))

    def weights_checksums(self) -> list[str]:
        return self._on_all(lambda url: self._request(url, "GET", "/weights_checksum/")["checksum"])

    def update_weights(self, named_tensors: Iterable[NamedTensor], bucket_bytes: int = 64 << 20) -> dict:
        """Push every tensor to every server in buckets, reset their prefix caches, check their versions advanced.

        Returns `{"bytes": payload bytes per server, "buckets": n, "seconds": wall time}`.
        """
        self.wait_until_healthy()
        start = time.perf_counter()
        before = self.weights_versions()
        update_id = uuid.uuid4().hex
        total_bytes, count = 0, 0
        pending: bytes | None = None

        def push(data: bytes, index: int, last: bool) -> None:
            params = {"update_id": update_id, "bucket": index, "last": str(last).lower()}
            headers = {"Content-Type": SAFETENSORS_MEDIA_TYPE}
            self._on_all(lambda url: self._request(url, "POST", "/update_weights/", data=data, params=params,
                                                   headers=headers))

        # Hold one bucket back so the final one can carry `last=true`.
        for bucket in bucketize(named_tensors, bucket_bytes):
            data = encode_bucket(bucket)
            if pending is not None:
                push(pending, count - 1, last=False)
            pending, count, total_bytes = data, count + 1, total_bytes + sum(t.numel() * t.element_size()
                                                                             for _, t in bucket)
        if pending is None:
            raise ValueError("update_weights got no tensors")
        push(pending, count - 1, last=True)
        self._on_all(lambda url: self._request(url, "POST", "/reset_prefix_cache/"))
        after = self.weights_versions()
        stale = [url for url, b, a in zip(self.urls, before, after) if a != b + 1]
        if stale:
            raise ServerError(f"weights_version did not advance by one on {stale} (before {before}, after {after})")
        return {"bytes": total_bytes, "buckets": count, "seconds": time.perf_counter() - start}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for session in self._sessions.values():
            session.close()
