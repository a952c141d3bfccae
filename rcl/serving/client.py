"""`ServerEngine`: the `GenerationEngine` interface over a pool of rcl (or TRL vllm-serve) generation servers.

Prompts are split into contiguous chunks, one per server, sent concurrently; each prompt travels once with `n`.
Transient failures (connection errors, 502/503/504) are retried with exponential backoff; a server that stays down
raises `ServerError` naming its URL. With `api="openai"` it generates through the OpenAI-style `/v1/completions` of
`vllm serve` (what TRL >= 1.16 serves) instead, and pushes no weights. Weights are pushed in buckets to every server of the pool, as HTTP bodies or
broadcast over a weight group (gloo or NCCL) that the client joins as the last rank.
"""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence, TypeVar, get_args
from urllib.parse import urlsplit

import requests
import torch
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from rcl.engines import Completion, SamplingParams, trim_completion
from rcl.serving.protocol import SAFETENSORS_MEDIA_TYPE, sampling_fields
from rcl.serving.collective import WeightGroup, open_group, pack_bucket
from rcl.serving.weights import NamedTensor, bucketize, encode_bucket

API_KEY_ENV = "RCL_API_KEY"
T = TypeVar("T")
WeightTransport = Literal["http", "gloo", "nccl"]
ServerAPI = Literal["rcl", "openai"]
OPENAI_OPTIONS = dict(logprobs=0, return_token_ids=True, return_tokens_as_token_ids=True,
                      include_stop_str_in_output=True)
"""vLLM's extensions to `/v1/completions` that make its answer carry what `/generate/` carries (stop strings stay in
the completion, as in HFEngine)."""


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


def _with_last(items: Iterable[T]) -> Iterator[tuple[int, T, bool]]:
    """`(index, item, is_last)`: one item is held back so the final one is known to be last."""
    pending: T | None = None
    index = -1
    for item in items:
        if index >= 0:
            yield index, pending, False  # type: ignore[misc]
        pending, index = item, index + 1
    if index >= 0:
        yield index, pending, True  # type: ignore[misc]


def _check_count(got: int, n_prompts: int, n: int, server: str) -> None:
    if got != n_prompts * n:
        raise ServerError(f"{server} returned {got} completions for {n_prompts} prompts x n={n}")


def _per_prompt(rows: list[T], n: int) -> list[list[T]]:
    """Prompt-major rows, `n` per prompt, as one group per prompt."""
    return [rows[i : i + n] for i in range(0, len(rows), n)]


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
        weight_transport: WeightTransport = "http",
        group_port: int = 51216,
        api: ServerAPI = "rcl",
    ):
        if not urls:
            raise ValueError("ServerEngine needs at least one server URL")
        if api not in get_args(ServerAPI):
            raise ValueError(f"api must be rcl or openai, got {api!r}")
        self.api = api
        self._served_models: dict[str, str] = {}
        if weight_transport not in get_args(WeightTransport):
            raise ValueError(f"weight_transport must be http, gloo or nccl, got {weight_transport!r}")
        self.weight_transport = weight_transport
        self.group_port = group_port
        self._groups: dict[str, WeightGroup] = {}
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
        path = "/health/" if self.api == "rcl" else "/health"

        def wait(url: str) -> None:
            while True:
                try:
                    self._sessions[url].get(f"{url}{path}", timeout=5.0).raise_for_status()
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
        _check_count(len(ids), n_prompts, params.n, "server")
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
        return _per_prompt(rows, params.n)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        self.wait_until_healthy()
        chunks = split_evenly([list(p) for p in prompts], len(self.urls))
        busy = [(url, chunk) for url, chunk in zip(self.urls, chunks) if chunk]

        def run(item: tuple[str, list[list[int]]]) -> list[list[Completion]]:
            url, chunk = item
            if self.api == "openai":
                return self._openai_generate(url, chunk, params)
            payload = dict(prompts=chunk, logprobs=0, **sampling_fields(params))
            body = self._request(url, "POST", "/generate/", json=payload)
            return self._completions(body, len(chunk), params)

        futures = [self._pool.submit(run, item) for item in busy]
        return [group for f in futures for group in f.result()]

    def _openai_generate(self, url: str, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if url not in self._served_models:
            self._served_models[url] = self._request(url, "GET", "/v1/models")["data"][0]["id"]
        fields = {k: v for k, v in sampling_fields(params).items() if v is not None}
        payload = dict(model=self._served_models[url], prompt=prompts, **fields, **OPENAI_OPTIONS)
        choices = sorted(self._request(url, "POST", "/v1/completions", json=payload)["choices"],
                         key=lambda c: c["index"])
        _check_count(len(choices), len(prompts), params.n, f"generation server {url}")
        rows = [Completion(list(c["token_ids"]), list(c["logprobs"]["token_logprobs"]) if c.get("logprobs") else None,
                           "stop" if c["finish_reason"] == "stop" else "length", c["text"]) for c in choices]
        return _per_prompt(rows, params.n)

    # -- weights --------------------------------------------------------------------------------------------------
    def _weights_states(self) -> list[dict]:
        """Each server's `/weights_version/` answer: the version and the last background failure."""
        return self._on_all(lambda url: self._request(url, "GET", "/weights_version/"))

    def weights_versions(self) -> list[int]:
        return [int(state["weights_version"]) for state in self._weights_states()]

    def weights_checksums(self) -> list[str]:
        return self._on_all(lambda url: self._request(url, "GET", "/weights_checksum/")["checksum"])

    def update_weights(self, named_tensors: Iterable[NamedTensor], bucket_bytes: int = 64 << 20) -> dict:
        """Push every tensor to every server in buckets, reset their prefix caches, check their versions advanced.

        Buckets travel as HTTP bodies (`weight_transport="http"`) or are broadcast over a weight group that this
        client joins as the last rank of each server (`"gloo"` on CPU, `"nccl"` on GPUs; one group per server, on
        `group_port + i`). Returns `{"bytes": payload bytes per server, "buckets": n, "seconds": wall time}`.
        """
        if self.api == "openai":
            raise ServerError("servers spoken to with the openai API take no weight pushes; serve the policy with "
                              "`rcl serve` (api: rcl)")
        self.wait_until_healthy()
        start = time.perf_counter()
        before = self.weights_versions()
        send = self._http_sender() if self.weight_transport == "http" else self._group_sender()
        total_bytes, count = 0, 0
        for index, bucket, last in _with_last(bucketize(named_tensors, bucket_bytes)):
            send(bucket, index, last)
            count, total_bytes = count + 1, total_bytes + sum(t.numel() * t.element_size() for _, t in bucket)
        if count == 0:
            raise ValueError("update_weights got no tensors")
        # runs after the queued loads on each server's engine thread, so the versions below are final
        self._on_all(lambda url: self._request(url, "POST", "/reset_prefix_cache/"))
        after = self._weights_states()
        stale = [(url, b, a) for url, b, a in zip(self.urls, before, after) if a["weights_version"] != b + 1]
        if stale:
            reasons = "; ".join(f"{url}: {b} -> {a['weights_version']}" + (f" ({a['last_error']})"
                                if a.get("last_error") else "") for url, b, a in stale)
            raise ServerError(f"weights_version did not advance by one: {reasons}")
        return {"bytes": total_bytes, "buckets": count, "seconds": time.perf_counter() - start}

    def _http_sender(self) -> Callable[[list[NamedTensor], int, bool], None]:
        update_id = uuid.uuid4().hex

        def send(bucket: list[NamedTensor], index: int, last: bool) -> None:
            data = encode_bucket(bucket)
            params = {"update_id": update_id, "bucket": index, "last": str(last).lower()}
            headers = {"Content-Type": SAFETENSORS_MEDIA_TYPE}
            self._on_all(lambda url: self._request(url, "POST", "/update_weights/", data=data, params=params,
                                                   headers=headers))

        return send

    def _group_sender(self) -> Callable[[list[NamedTensor], int, bool], None]:
        device = f"cuda:{torch.cuda.current_device()}" if self.weight_transport == "nccl" else "cpu"
        for i, url in enumerate(self.urls):
            if url not in self._groups:
                self._groups[url] = self._join_group(url, self.group_port + i, device)

        def send(bucket: list[NamedTensor], index: int, last: bool) -> None:
            flat, metas = pack_bucket(bucket, device)
            body = {"tensors": metas, "first": index == 0, "last": last}
            for url, group in self._groups.items():  # one broadcast at a time: each blocks until its server receives
                self._request(url, "POST", "/update_bucket/", json=body)
                try:
                    group.broadcast(flat, src=group.world_size - 1)
                except RuntimeError as exc:
                    raise ServerError(f"weight group with generation server {url} failed in a broadcast: {exc}") from exc

        return send

    def _join_group(self, url: str, port: int, device: str) -> WeightGroup:
        host = urlsplit(url).hostname or "127.0.0.1"
        world_size = int(self._request(url, "GET", "/get_world_size/")["world_size"]) + 1
        uuid_ = str(torch.cuda.get_device_properties(device).uuid) if device.startswith("cuda") else None
        self._request(url, "POST", "/init_communicator/", json=dict(
            host=host, port=port, world_size=world_size, client_device_uuid=uuid_, group_kind=self.weight_transport))
        return open_group(self.weight_transport, host, port, world_size - 1, world_size, device)

    def close_weight_groups(self) -> None:
        """Leave every weight group (the servers leave theirs in step)."""
        for url, group in list(self._groups.items()):
            closing = self._pool.submit(self._request, url, "POST", "/close_communicator/")
            group.close()  # meets the server's side, which runs while the request above waits
            closing.result()
            del self._groups[url]

    def close(self) -> None:
        self.close_weight_groups()
        self._pool.shutdown(wait=False)
        for session in self._sessions.values():
            session.close()
