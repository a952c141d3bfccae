"""`python -m rcl serve`: a TRL `vllm-serve` compatible generation server with bucketed weight updates.

All engine work (generation, weight loads, communicator RPCs) runs on one worker thread, so requests take effect in
the order they arrive: a weight update that was accepted before a generation request is visible to it. Generation
requests that wait for that thread together, with equal sampling parameters and no seed, run as one batch
(`rcl.serving.batching`). Health and version queries never wait for that thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from itertools import accumulate
from typing import Any, Callable, Iterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from pydantic import ValidationError

from rcl.engines import Completion, SamplingParams
from rcl.serving.backends import ServingBackend, UnsupportedOperation
from rcl.serving.batching import RequestBatcher
from rcl.serving.prompt_logprobs import as_vllm_json
from rcl.serving.protocol import (
    ChatCompletionsRequest,
    CompletionsRequest,
    DetokenizeRequest,
    GenerateRequest,
    GenerateResponse,
    InitCommunicatorRequest,
    MessageResponse,
    ServerLimits,
    StreamOptions,
    TokenizeRequest,
    UpdateBucketRequest,
    UpdateNamedParamRequest,
    WeightsUpdateResponse,
)
from rcl.serving.collective import bucket_nbytes
from rcl.serving.tool_calls import TOOL_PARSERS, ToolParser
from rcl.serving.weights import decode_bucket

log = logging.getLogger("rcl.serve")
API_KEY_ENV = "RCL_API_KEY"
SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)} - {"top_logprobs"}  # /generate/ has no place for them


@dataclass
class _WeightsState:
    version: int = 0
    update_id: str | None = None
    buckets: int = 0
    named_param_updates: int = 0
    named_param_failures: list[str] = field(default_factory=list)
    """Per-tensor updates of the update in progress that failed on the engine thread; the update then fails whole."""
    last_error: str | None = None
    """The last failure of work the client does not wait for (communicator RPCs), reported with the version."""
    group_open: bool = False


def _bad(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


class BodySizeLimit:
    """ASGI middleware: answer 413 once a request body exceeds `max_bytes`, counted while it is read, so a chunked
    upload (no Content-Length) is stopped at the limit instead of being read whole. A declared Content-Length over the
    limit is refused before anything is read."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> HTTPException:
        return _bad(413, f"request body of {size} bytes is larger than the limit {self.max_bytes}")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._too_large(declared.decode()).detail}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException reaches FastAPI's handler as a 413 wherever the body is being read
                    raise self._too_large(f"more than {self.max_bytes}")
            return message

        await self.app(scope, limited_receive, send)


def _prompt_ids(req: GenerateRequest, tokenizer: Any, limits: ServerLimits) -> list[list[int]]:
    vocab = len(tokenizer)
    out = []
    for i, prompt in enumerate(req.prompts):
        ids = tokenizer(prompt, add_special_tokens=req.add_special_tokens)["input_ids"] if isinstance(prompt, str) \
            else list(prompt)
        if not ids:
            raise _bad(422, f"prompt {i} is empty")
        if len(ids) > limits.max_prompt_tokens:
            raise _bad(413, f"prompt {i} has {len(ids)} tokens, more than the server limit {limits.max_prompt_tokens}")
        if min(ids) < 0 or max(ids) >= vocab:
            raise _bad(422, f"prompt {i} has token ids outside the vocabulary [0, {vocab})")
        out.append(ids)
    outside = sorted(token for token in req.logit_bias if not 0 <= token < vocab)
    if outside:
        raise _bad(422, f"logit_bias names token ids outside the vocabulary [0, {vocab}): {outside}")
    return out


def sampling_params(req: GenerateRequest, limits: ServerLimits) -> SamplingParams:
    if len(req.prompts) > limits.max_prompts:
        raise _bad(413, f"{len(req.prompts)} prompts, more than the server limit {limits.max_prompts}")
    if req.n > limits.max_n:
        raise _bad(422, f"n={req.n} is more than the server limit {limits.max_n}")
    if req.max_tokens > limits.max_tokens:
        raise _bad(422, f"max_tokens={req.max_tokens} is more than the server limit {limits.max_tokens}")
    if req.min_tokens > req.max_tokens:
        raise _bad(422, f"min_tokens={req.min_tokens} is more than max_tokens={req.max_tokens}")
    if req.images and any(img is not None for img in req.images):
        raise _bad(422, "images are not supported by this server")
    if req.structured_outputs_regex or req.guided_decoding_regex:
        raise _bad(422, "structured/guided decoding is not supported by this server")
    unknown = set(req.generation_kwargs) - SAMPLING_FIELDS
    if unknown:
        raise _bad(422, f"unsupported generation_kwargs: {sorted(unknown)}; supported: {sorted(SAMPLING_FIELDS)}")
    values = dict(
        max_tokens=req.max_tokens,
        n=req.n,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=max(req.top_k, 0),
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        logit_bias=dict(req.logit_bias),
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        stop=list(req.stop or []),
        stop_token_ids=list(req.stop_token_ids or []),
        seed=req.seed,
    )
    values.update(req.generation_kwargs)
    return SamplingParams(**values)


def _token_names(token_ids: list[int], req: CompletionsRequest | ChatCompletionsRequest, tokenizer: Any) -> list[str]:
    return [f"token_id:{t}" if req.return_tokens_as_token_ids else tokenizer.decode([t]) for t in token_ids]


def _usage(prompts: list[list[int]], completions: list[Any]) -> dict[str, int]:
    prompt_tokens, completion_tokens = sum(len(p) for p in prompts), sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _chat_choice(index: int, completion: Any, req: ChatCompletionsRequest, tokenizer: Any,
                 tool_parser: ToolParser | None = None) -> dict:
    """One `/v1/chat/completions` choice, shaped as vLLM's server shapes it; with `tool_parser` and tools offered,
    the calls the text makes become the message's `tool_calls` (finish reason "tool_calls")."""
    choice: dict[str, Any] = {"index": index, "message": {"role": "assistant", "content": completion.text},
                              "finish_reason": completion.finish_reason, "logprobs": None}
    if tool_parser is not None and req.tools and req.tool_choice in (None, "auto"):
        parsed = tool_parser(completion.text)
        if parsed.calls:
            choice["message"] = {"role": "assistant", "content": parsed.content,
                                 "tool_calls": [call.as_openai() for call in parsed.calls]}
            choice["finish_reason"] = "tool_calls"
    if req.return_token_ids:
        choice["token_ids"] = list(completion.token_ids)
    if req.logprobs and completion.logprobs is not None:
        tokens = _token_names(completion.token_ids, req, tokenizer)
        alternatives = _alternatives(completion, req, tokenizer)

        def entry(token: str, logprob: float) -> dict:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

        choice["logprobs"] = {"content": [{**entry(t, lp), "top_logprobs": [entry(*alt) for alt in alts]}
                                          for t, lp, alts in zip(tokens, completion.logprobs, alternatives)]}
    return choice


def _alternatives(completion: Any, req: CompletionsRequest | ChatCompletionsRequest,
                  tokenizer: Any) -> list[list[tuple[str, float]]]:
    """Per generated token, its sampler's most likely tokens as (name, log-prob), most likely first (none when the
    request asked none)."""
    if not completion.top_logprobs:
        return [[] for _ in completion.token_ids]
    return [list(zip(_token_names([i for i, _ in alts], req, tokenizer), (lp for _, lp in alts)))
            for alts in completion.top_logprobs]


def _render_chat(req: ChatCompletionsRequest, tokenizer: Any, parses_tools: bool = False) -> str:
    """The conversation as the prompt text, by the request's or the tokenizer's chat template. `parses_tools`:
    the server reads tool calls out of completions (`--tool-call-parser`), so `tool_choice: "auto"` is served."""
    if req.add_generation_prompt and req.continue_final_message:
        raise _bad(422, "add_generation_prompt and continue_final_message cannot both be true")
    if req.tools and req.tool_choice not in ("none", "auto", None):
        raise _bad(422, f"tool_choice {req.tool_choice!r} needs constrained decoding, which this server does not do: "
                        "send tool_choice 'auto' (with `rcl serve --tool-call-parser`) or 'none'")
    if req.tools and req.tool_choice != "none" and not parses_tools:
        raise _bad(422, f"tool_choice {req.tool_choice!r} needs tool-call parsing: start the server with "
                        "`--tool-call-parser hermes`, or send tool_choice 'none' (the tools are rendered into the "
                        "prompt and calls stay in the text)")
    if req.chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise _bad(400, "the served tokenizer has no chat template: send chat_template, or use /v1/completions")
    try:
        messages = req.template_messages()
    except ValueError as exc:
        raise _bad(422, str(exc)) from None
    # as vLLM merges them: the request's chat_template_kwargs win over the fields of the same name
    options = {"add_generation_prompt": req.add_generation_prompt, "continue_final_message": req.continue_final_message,
               "chat_template": req.chat_template, "tools": req.tools or None, **req.chat_template_kwargs}
    try:
        return tokenizer.apply_chat_template(messages, **{**options, "tokenize": False})
    except (ValueError, TypeError, TemplateError) as exc:  # the request's template or fields are at fault
        raise _bad(400, f"the chat template could not render these messages: {type(exc).__name__}: {exc}") from None


def chat_request_prompt_ids(req: ChatCompletionsRequest, tokenizer: Any, parses_tools: bool = False) -> list[int]:
    text = _render_chat(req, tokenizer, parses_tools)
    return tokenizer(text, add_special_tokens=req.add_special_tokens)["input_ids"]


def _choice(index: int, prompt: list[int], completion: Any, req: CompletionsRequest, tokenizer: Any) -> dict:
    """One `/v1/completions` choice, shaped as vLLM's server shapes it."""
    choice: dict[str, Any] = {"index": index, "text": completion.text, "finish_reason": completion.finish_reason,
                              "logprobs": None}
    if req.return_token_ids:
        choice.update(prompt_token_ids=prompt, token_ids=list(completion.token_ids))
    if req.logprobs is not None and completion.logprobs is not None:
        tokens = _token_names(completion.token_ids, req, tokenizer)
        # as vLLM: the k most likely tokens, and the sampled one when it is not among them
        choice["logprobs"] = {"tokens": tokens, "token_logprobs": list(completion.logprobs),
                              "top_logprobs": [{**dict(alts), t: lp} for t, lp, alts in
                                               zip(tokens, completion.logprobs, _alternatives(completion, req,
                                                                                               tokenizer))]}
    return choice


def _echoed(choice: dict, prompt: list[int], prompt_text: str, completion: Any, positions: list,
            req: CompletionsRequest, tokenizer: Any) -> None:
    """An echo choice: the prompt's text before the completion's, and (with logprobs) every token's raw log-prob
    and its alternatives (`positions`, scored over prompt + completion), the first token's None, as vLLM gives them."""
    ids = [*prompt, *completion.token_ids]
    choice["text"] = prompt_text + completion.text
    if req.logprobs is None:
        return
    tokens = _token_names(ids, req, tokenizer)
    pieces = [tokenizer.decode([token]) for token in ids] if req.return_tokens_as_token_ids else tokens
    offsets = [0, *accumulate(len(piece) for piece in pieces)][:-1]
    choice["logprobs"] = {
        "tokens": tokens,
        "token_logprobs": [None] + [positions[p][ids[p]][0] for p in range(1, len(ids))],
        "top_logprobs": [None] + [dict(zip(_token_names(list(positions[p]), req, tokenizer),
                                           (lp for lp, _ in positions[p].values()))) for p in range(1, len(ids))],
        "text_offset": offsets,
    }


def _event_stream(head: dict, parts: list[tuple[dict, int]], usage: dict, options: StreamOptions,
                  first: dict | None = None) -> StreamingResponse:
    """A finished answer as OpenAI's server-sent events: one chunk per `(chunk choice, completion tokens it carries)`
    in `parts`, each with `head` (id, object, created, model) and the first also with `first`; the usage as
    `options` asks; then `data: [DONE]`."""
    prompt_tokens = usage["prompt_tokens"]

    def events() -> Iterator[str]:
        sent = 0
        for index, (part, tokens) in enumerate(parts):
            sent += tokens
            chunk = {**head, **((first or {}) if index == 0 else {}), "choices": [part]}
            if options.include_usage:
                chunk["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": sent,
                                  "total_tokens": prompt_tokens + sent} if options.continuous_usage_stats else None
            yield f"data: {json.dumps(chunk)}\n\n"
        if options.include_usage:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _chat_stream_parts(choice: dict, completion: Any) -> list[tuple[dict, int]]:
    """A chat choice as stream chunk choices: its message as one delta, then its finish reason, as vLLM ends a
    choice's stream."""
    message = choice["message"]
    if "tool_calls" in message:  # a stream numbers its calls
        message = {**message, "tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]}
    delta = {"index": choice["index"], "delta": message, "logprobs": choice["logprobs"], "finish_reason": None}
    if "token_ids" in choice:
        delta["token_ids"] = choice["token_ids"]
    end = {"index": choice["index"], "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}
    return [(delta, len(completion.token_ids)), (end, 0)]


def create_app(backend: ServingBackend, limits: ServerLimits | None = None, api_key: str | None = None,
               model_name: str | list[str] = "rcl", trust_request_chat_template: bool = False,
               tool_call_parser: str | None = None) -> FastAPI:
    """`model_name`: the name, or names, a `/v1/completions` request may give as `model` (or leave out); `/v1/models`
    lists them, the first first (the one clients that read the list use). `trust_request_chat_template`: whether a
    chat request may bring its own Jinja template (as vLLM, off by default: a template is code the server runs).
    `tool_call_parser`: a `rcl.serving.tool_calls` parser name, for `tool_choice: "auto"` (None: calls stay text)."""
    tool_parser = TOOL_PARSERS[tool_call_parser] if tool_call_parser else None
    model_names = [model_name] if isinstance(model_name, str) else list(model_name)
    started = int(time.time())  # /v1/models' `created`, as vLLM gives it: when the server started
    model_name = model_names[0]
    limits = limits or ServerLimits()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rcl-engine")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="rcl generation server", lifespan=lifespan)
    weights = _WeightsState()
    app.state.backend, app.state.worker, app.state.weights = backend, worker, weights

    batcher = RequestBatcher(worker, backend.generate, limits.max_prompts)
    app.state.batcher = batcher

    async def on_worker(fn: Callable[..., Any], *args: Any) -> Any:
        batcher.close()  # a generation request that arrives after this job must not run before it
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)

    def fire_and_forget(fn: Callable[..., Any], *args: Any) -> None:
        # NCCL RPCs: the client broadcasts only after our reply, so the worker must not be awaited here.
        batcher.close()
        future = worker.submit(fn, *args)

        def report(f: Any) -> None:
            if f.exception() is not None:
                weights.last_error = f"{fn.__name__} failed: {type(f.exception()).__name__}: {f.exception()}"
                log.error("%s", weights.last_error)

        future.add_done_callback(report)

    # Added first, so it sits inside `guard` and its 413 reaches FastAPI's handler unwrapped.
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key is not None:
            sent = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(sent.encode(), api_key.encode()):
                return JSONResponse(
                    {"detail": "missing or wrong API key: send 'Authorization: Bearer <key>'"}, status_code=401
                )
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}" for err in exc.errors()
        )
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(UnsupportedOperation)
    async def unsupported(request: Request, exc: UnsupportedOperation):
        return JSONResponse({"detail": str(exc)}, status_code=501)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/health/")
    @app.get("/health", include_in_schema=False)  # vLLM's spelling, which TRL >= 1.16 polls
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "rcl"}
                                           for name in model_names]}

    def check_model(model: str | None) -> None:
        if model is not None and model not in model_names:
            raise _bad(404, f"model {model!r} is not served here; this server answers to "
                            f"{' or '.join(repr(n) for n in model_names)} (`rcl serve --served-model-name` adds names)")

    def check_template(req: ChatCompletionsRequest) -> None:
        if not trust_request_chat_template and (req.chat_template is not None
                                                or req.chat_template_kwargs.get("chat_template") is not None):
            raise _bad(400, "request chat templates need `rcl serve --trust-request-chat-template` (a template is "
                            "code the server runs; vLLM refuses them the same way by default)")

    def refuse_unsupported(req: CompletionsRequest | ChatCompletionsRequest, sampling: str) -> None:
        unsupported = req.unsupported_fields()
        if unsupported:
            raise _bad(422, f"unsupported fields {unsupported}: this server takes the sampling fields of /generate/ "
                            f"({sampling})")
        check_model(req.model)

    async def generate_for(gen: GenerateRequest, generate: bool = True,
                           top_logprobs: int = 0) -> tuple[list[list[int]], list[Any]]:
        """The prompts' ids and their completions (with `top_logprobs` alternatives per token); `generate` False
        (echo with max_tokens 0) checks the same request limits and gives each prompt n empty completions."""
        params = replace(sampling_params(gen, limits), top_logprobs=top_logprobs)
        prompts = _prompt_ids(gen, backend.tokenizer, limits)
        if not generate:
            return prompts, [[Completion([], None, "length", "") for _ in range(gen.n)] for _ in prompts]
        groups = await batcher.generate(prompts, params)
        return prompts, groups

    def validated(build: Callable[[], Any]) -> Any:
        """`build()`, its pydantic ValidationError answered as FastAPI answers an invalid body."""
        try:
            return build()
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None

    @app.post("/v1/completions")
    async def completions(req: CompletionsRequest):
        if req.max_tokens == 0 and not req.echo:
            raise _bad(422, "max_tokens=0 needs echo: true (it scores the prompt and generates nothing)")
        for name, asked in (("logprobs", req.logprobs), ("prompt_logprobs", req.prompt_logprobs)):
            if asked is not None and asked > limits.max_logprobs:
                raise _bad(422, f"{name}={asked} is more than the server limit {limits.max_logprobs} "
                                "(`rcl serve --max-logprobs`)")
        refuse_unsupported(req, "n, temperature, top_p, top_k, min_p, repetition_penalty, frequency_penalty, "
                                "presence_penalty, logit_bias, max_tokens, min_tokens, ignore_eos, stop, stop_token_ids, "
                                "seed, logprobs, echo, prompt_logprobs")
        gen = validated(req.as_generate)
        # echo's log-probs (any k) come from scoring prompt and completion together, not from the sampler
        prompts, groups = await generate_for(gen, generate=req.max_tokens > 0,
                                             top_logprobs=0 if req.echo else req.logprobs or 0)
        flat = [(prompt, c) for prompt, group in zip(prompts, groups) for c in group]  # prompt-major, n per prompt
        owners = [index for index, group in enumerate(groups) for _ in group]
        choices = [_choice(i, prompt, c, req, backend.tokenizer) for i, (prompt, c) in enumerate(flat)]
        if req.echo:
            texts = [p if isinstance(p, str) else backend.tokenizer.decode(ids)
                     for p, ids in zip(gen.prompts, prompts)]
            top_k = min(req.logprobs or 0, len(backend.tokenizer))
            scored = await on_worker(backend.prompt_logprobs, [[*p, *c.token_ids] for p, c in flat], top_k) \
                if req.logprobs is not None else [None] * len(flat)
            for choice, (prompt, c), index, positions in zip(choices, flat, owners, scored):
                _echoed(choice, prompt, texts[index], c, positions, req, backend.tokenizer)
        if req.prompt_logprobs is not None:
            top_k = min(req.prompt_logprobs, len(backend.tokenizer))
            scored = await on_worker(backend.prompt_logprobs, prompts, top_k)
            per_prompt = [as_vllm_json(positions, backend.tokenizer) for positions in scored]
            for choice, index in zip(choices, owners):
                choice["prompt_logprobs"] = per_prompt[index]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        usage = _usage(prompts, [c for _, c in flat])
        if req.stream:
            return _event_stream(head, [(choice, len(c.token_ids)) for choice, (_, c) in zip(choices, flat)], usage,
                                 req.stream_options)
        return {**head, "choices": choices, "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionsRequest):
        refuse_unsupported(req, "n, temperature, top_p, top_k, min_p, repetition_penalty, frequency_penalty, "
                                "presence_penalty, logit_bias, max_tokens or max_completion_tokens, min_tokens, "
                                "ignore_eos, stop, stop_token_ids, seed, logprobs, top_logprobs")
        check_template(req)
        if req.top_logprobs and not req.logprobs:
            raise _bad(422, f"top_logprobs={req.top_logprobs} needs logprobs: true")
        if (req.top_logprobs or 0) > limits.max_logprobs:
            raise _bad(422, f"top_logprobs={req.top_logprobs} is more than the server limit {limits.max_logprobs} "
                            "(`rcl serve --max-logprobs`)")
        prompt_ids = chat_request_prompt_ids(req, backend.tokenizer, tool_parser is not None)
        prompts, groups = await generate_for(validated(lambda: req.as_generate(prompt_ids, limits.max_tokens)),
                                             top_logprobs=req.top_logprobs or 0)
        (group,) = groups
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name}
        choices = [_chat_choice(i, c, req, backend.tokenizer, tool_parser) for i, c in enumerate(group)]
        extra = {"prompt_token_ids": prompts[0]} if req.return_token_ids else {}
        if req.stream:
            parts = [part for choice, c in zip(choices, group) for part in _chat_stream_parts(choice, c)]
            return _event_stream({**head, "object": "chat.completion.chunk"}, parts, _usage(prompts, group),
                                 req.stream_options, first=extra)
        return {**head, "choices": choices, "usage": _usage(prompts, group), **extra}

    @app.post("/tokenize")
    async def tokenize(body: dict[str, Any]):
        """vLLM's route: a text's token ids, or a chat's as `/v1/chat/completions` would render and tokenize it."""
        tokenizer = backend.tokenizer
        if "messages" in body:
            chat = validated(lambda: ChatCompletionsRequest.model_validate(body))
            check_model(chat.model)
            check_template(chat)
            ids = chat_request_prompt_ids(chat, tokenizer, tool_parser is not None)
        else:
            text = validated(lambda: TokenizeRequest.model_validate(body))
            check_model(text.model)
            ids = tokenizer(text.prompt, add_special_tokens=text.add_special_tokens)["input_ids"]
        strings = tokenizer.convert_ids_to_tokens(ids) if body.get("return_token_strs") else None
        return {"count": len(ids), "max_model_len": limits.max_prompt_tokens, "tokens": ids, "token_strs": strings}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        check_model(req.model)
        if req.tokens and (min(req.tokens) < 0 or max(req.tokens) >= len(backend.tokenizer)):
            raise _bad(422, f"token ids outside the vocabulary [0, {len(backend.tokenizer)})")
        return {"prompt": backend.tokenizer.decode(req.tokens)}

    @app.get("/get_world_size/")
    async def world_size():
        return {"world_size": backend.world_size}

    @app.post("/generate/", response_model=GenerateResponse)
    async def generate(req: GenerateRequest):
        params = sampling_params(req, limits)
        prompts = _prompt_ids(req, backend.tokenizer, limits)
        groups = await batcher.generate(prompts, params)
        flat = [c for group in groups for c in group]
        with_logprobs = req.logprobs is not None and all(c.logprobs is not None for c in flat)
        return GenerateResponse(
            prompt_ids=prompts,
            completion_ids=[c.token_ids for c in flat],
            logprobs=[[[lp] for lp in c.logprobs] for c in flat] if with_logprobs else None,
            logprob_token_ids=[[[t] for t in c.token_ids] for c in flat] if with_logprobs else None,
            finish_reasons=[c.finish_reason for c in flat],
            completion_texts=[c.text for c in flat] if req.return_text else None,
        )

    @app.post("/update_weights/", response_model=WeightsUpdateResponse)
    async def update_weights(request: Request, update_id: str, bucket: int = 0, last: bool = False):
        """One bucket of an update: body = safetensors bytes. `last=true` completes the update."""
        body = await request.body()  # BodySizeLimit stops the read past limits.max_body_bytes
        try:
            named = decode_bucket(body)
        except Exception as exc:  # safetensors raises its own error types
            raise _bad(400, f"body is not a safetensors file: {exc}") from exc
        if weights.update_id != update_id:
            weights.update_id, weights.buckets = update_id, 0
        loaded = await on_worker(backend.load_weights, named, bucket == 0, last)
        weights.buckets += 1
        if last:
            weights.version += 1
            weights.update_id = None
            log.info("weights updated: weights_version=%d (%d buckets)", weights.version, weights.buckets)
        return WeightsUpdateResponse(tensors=loaded, weights_version=weights.version, complete=last)

    adapter = {"version": 0}

    @app.post("/load_adapter/")
    async def load_adapter(request: Request, version: int):
        """Serve a new LoRA adapter version: body = safetensors bytes of the adapter (rcl.serving.adapters)."""
        from rcl.serving.adapters import decode_adapter

        body = await request.body()
        try:
            tensors, config = decode_adapter(body)
        except Exception as exc:  # safetensors raises its own error types
            raise _bad(400, f"body is not an adapter: {exc}") from exc
        loaded = await on_worker(backend.load_adapter, tensors, config, version)
        adapter["version"] = version
        log.info("adapter loaded: adapter_version=%d (%d tensors)", version, loaded)
        return {"tensors": loaded, "adapter_version": version}

    @app.get("/adapter_version/")
    async def adapter_version():
        return {"adapter_version": adapter["version"]}

    @app.get("/weights_version/")
    async def weights_version():
        return {"weights_version": weights.version, "last_error": weights.last_error}

    @app.get("/weights_checksum/")
    async def weights_checksum():
        checksum = await on_worker(backend.checksum)
        return {"checksum": checksum, "weights_version": weights.version}

    @app.post("/init_communicator/", response_model=MessageResponse)
    async def init_communicator(req: InitCommunicatorRequest):
        kind = req.group_kind or backend.group_kinds[0]
        if kind not in backend.group_kinds:
            raise UnsupportedOperation(f"this engine's weight group is {' or '.join(backend.group_kinds)}, not {kind}; "
                                       "or push weights with POST /update_weights/")
        expected = backend.world_size + 1
        if req.world_size != expected:
            raise _bad(422, f"world_size={req.world_size}, but this server has {backend.world_size} workers + 1 client")
        fire_and_forget(backend.init_communicator, req.host, req.port, req.world_size, req.client_device_uuid, kind)
        weights.group_open = True
        return MessageResponse(message=f"initialising the {kind} communicator")

    def check_before_broadcast(metas: list[dict]) -> None:
        # The client blocks in its broadcast once we reply: refuse here what the engine thread would fail on.
        if not weights.group_open:
            raise _bad(409, "no weight group: POST /init_communicator/ first")
        bucket_nbytes(metas)  # unknown dtypes raise ValueError: a 400

    @app.post("/update_named_param/", response_model=MessageResponse)
    async def update_named_param(req: UpdateNamedParamRequest):
        check_before_broadcast([req.model_dump()])

        def receive_named_param() -> None:
            try:
                backend.update_named_param(req.name, req.dtype, req.shape)
            except Exception as exc:
                weights.named_param_failures.append(f"{req.name}: {type(exc).__name__}: {exc}")
                raise

        fire_and_forget(receive_named_param)
        weights.named_param_updates += 1
        return MessageResponse(message=f"receiving {req.name}")

    @app.post("/update_bucket/", response_model=MessageResponse)
    async def update_bucket(req: UpdateBucketRequest):
        """The client broadcasts the bucket after this reply; `last` completes the update on the engine thread."""
        metas = [m.model_dump() for m in req.tensors]
        check_before_broadcast(metas)

        def receive() -> None:
            loaded = backend.receive_bucket(metas, req.first, req.last)
            if req.last:
                weights.version += 1
                log.info("weights updated: weights_version=%d (bucket of %d over the weight group)", weights.version,
                         loaded)

        fire_and_forget(receive)
        return MessageResponse(message=f"receiving {len(metas)} tensors")

    @app.post("/reset_prefix_cache/", response_model=MessageResponse)
    async def reset_prefix_cache():
        ok = await on_worker(backend.reset_prefix_cache)  # runs after every queued per-tensor load
        if weights.named_param_updates:  # a TRL-style per-tensor update is complete when the client resets the cache
            failures, updates = weights.named_param_failures, weights.named_param_updates
            weights.named_param_updates, weights.named_param_failures = 0, []
            if failures:
                raise _bad(500, f"{len(failures)} of {updates} per-tensor updates failed, weights_version stays "
                                f"{weights.version}: " + "; ".join(failures))
            weights.version += 1
            log.info("weights updated: weights_version=%d (per-tensor)", weights.version)
        return MessageResponse(message=f"reset prefix cache, status: {ok}")

    @app.post("/close_communicator/", response_model=MessageResponse)
    async def close_communicator():
        weights.group_open = False
        await on_worker(backend.close_communicator)
        return MessageResponse(message="communicator closed")

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rcl serve", description=__doc__.splitlines()[0],
                                allow_abbrev=False)
    p.add_argument("--model", required=True, help="HF folder, hub id or tiny preset (tiny-1m, tiny-10m)")
    p.add_argument("--served-model-name", nargs="+", default=[],
                   help="names /v1/completions requests may give as `model`, besides --model itself (as in vLLM; the "
                        "first is the one /v1/models lists first)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--api-key", default=None, help=f"require this key on every request (default: ${API_KEY_ENV})")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="hf engine: cpu or cuda (default: cuda when available)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm engine")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm engine")
    p.add_argument("--max-model-len", type=int, default=None, help="vllm engine")
    p.add_argument("--enable-prefix-caching", action="store_true", help="vllm engine")
    p.add_argument("--enforce-eager", action="store_true", help="vllm engine: no CUDA graphs")
    p.add_argument("--enable-lora", action="store_true",
                   help="take LoRA adapters on /load_adapter/ (adapter-only weight sync); vllm: served as LoRA "
                        "requests")
    p.add_argument("--max-lora-rank", type=int, default=64, help="vllm engine, with --enable-lora")
    p.add_argument("--tool-call-parser", choices=sorted(TOOL_PARSERS), default=None,
                   help="read tool calls out of chat completions, for tool_choice 'auto' (hermes: Qwen2.5/Qwen3 and "
                        "Hermes <tool_call> blocks); without it, tools need tool_choice 'none'")
    for f in fields(ServerLimits):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help="request limit")
    p.add_argument("--trust-request-chat-template", action="store_true",
                   help="let /v1/chat/completions requests bring their own chat_template (as vLLM's flag)")
    p.add_argument("--log-level", default="info")
    return p


def build_backend(args: argparse.Namespace) -> ServingBackend:
    if args.engine == "vllm":
        from rcl.serving.vllm_engine import VLLMBackend

        return VLLMBackend(
            args.model,
            dtype=args.dtype,
            seed=args.seed,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
            enable_prefix_caching=args.enable_prefix_caching,
            enforce_eager=args.enforce_eager,
            enable_lora=args.enable_lora,
            max_lora_rank=args.max_lora_rank,
        )
    from rcl.serving.backends import HFBackend

    return HFBackend(args.model, dtype=args.dtype, device=args.device, seed=args.seed, enable_lora=args.enable_lora)


def security_warnings(host: str, api_key: str | None) -> list[str]:
    """What `rcl serve` warns about at start: without a key, anyone who reaches the port can replace the weights."""
    if api_key:
        return []
    who = "any local user" if host in ("127.0.0.1", "localhost", "::1") else f"anyone who can reach {host}"
    return [f"no API key: {who} can push weights (/update_weights/, /init_communicator/) and generate; "
            f"set --api-key or ${API_KEY_ENV} (`rcl launch` always sets one)"]


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def cli_main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    for warning in security_warnings(args.host, api_key):
        log.warning("%s", warning)
    limits = ServerLimits(**{f.name: getattr(args, f.name) for f in fields(ServerLimits)})
    try:
        backend = build_backend(args)
    except (ImportError, OSError, ValueError) as exc:
        raise SystemExit(f"rcl serve: {exc}") from None
    # uvicorn restores this handler and re-raises SIGTERM after its graceful shutdown: we then exit with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        app = create_app(backend, limits, api_key, model_name=[*args.served_model_name, args.model],
                         trust_request_chat_template=args.trust_request_chat_template,
                         tool_call_parser=args.tool_call_parser)
        log.info("serving %s with the %s engine on http://%s:%d (api key %s)", args.model, args.engine, args.host,
                 args.port, "required" if api_key else "off")
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass
    finally:
        backend.close()
    sys.exit(0)
