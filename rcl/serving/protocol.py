"""Wire format of the generation server: TRL `vllm-serve` compatible requests plus rcl's bucketed weight update.

Every path ends with `/` as in TRL. `/generate/` takes text or token-id prompts and answers `prompt_ids`,
`completion_ids` (n per prompt, prompt-major), `logprobs` (sequence x token x 1, the sampled token's log-prob, as in
TRL >= 1.0) and rcl's `finish_reasons`. Weight buckets travel as one safetensors file per request
(`POST /update_weights/`, body = safetensors bytes); its `__metadata__` says which update the bucket belongs to and
whether it is the last one, which is when the server's `weights_version` advances. Over a weight group
(`/init_communicator/`), `POST /update_bucket/` announces a bucket's tensors and the client then broadcasts them as
one flat buffer (`rcl.serving.collective`).

TRL >= 1.16 talks to vLLM's own server instead; for generation, rcl also answers the subset of its OpenAI-style routes
that TRL's client uses (`GET /health`, `GET /v1/models`, `POST /v1/completions` and `POST /v1/chat/completions`, with
token ids and log-probs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rcl.engines import SamplingParams
from rcl.serving.tool_calls import arguments_as_objects

SAFETENSORS_MEDIA_TYPE = "application/octet-stream"
BUCKET_UPDATE_ID = "rcl_update_id"
BUCKET_INDEX = "rcl_bucket"
BUCKET_LAST = "rcl_last"


@dataclass
class ServerLimits:
    """Request limits; anything above them is answered with a 4xx that names the limit."""

    max_prompts: int = 1024
    """Most prompts in one /generate/ request."""
    max_n: int = 256
    """Most completions per prompt."""
    max_tokens: int = 8192
    """Largest max_tokens a request may ask for."""
    max_prompt_tokens: int = 32768
    """Longest prompt, in tokens."""
    max_logprobs: int = 100
    """Most alternatives a request may ask per token (`logprobs` with echo, `prompt_logprobs`), as vLLM's
    --max-logprobs (100: what TRL's get_sequence_logprobs asks by default)."""
    max_body_mb: float = 4096.0
    """Largest request body (weight buckets included), in MiB."""

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class SamplingFields(BaseModel):
    """The sampling fields `/generate/` and `/v1/completions` share, with the same bounds."""

    n: int = Field(1, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1)
    """-1 or 0 disables top-k."""
    min_p: float = Field(0.0, ge=0, le=1)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    """OpenAI's: subtracted from a token's logit per time the completion so far holds it."""
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    """OpenAI's: subtracted from a token's logit once the completion so far holds it."""
    logit_bias: dict[int, float] = Field(default_factory=dict)
    """Token id (a string key in JSON) to a bias in [-100, 100], added to its logit at every step."""
    max_tokens: int = Field(16, ge=1)
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    min_tokens: int = Field(0, ge=0)
    """No stop id (eos, stop_token_ids) can end a completion before it has this many tokens."""
    ignore_eos: bool = False
    """The tokenizer's eos does not end a completion (stop_token_ids and stop strings still do)."""

    @field_validator("logit_bias")
    @classmethod
    def _bias_in_range(cls, bias: dict[int, float]) -> dict[int, float]:
        outside = sorted(token for token, value in bias.items() if not -100 <= value <= 100)
        if outside:
            raise ValueError(f"logit_bias values must be in [-100, 100] (tokens {outside})")
        return bias


class GenerateRequest(SamplingFields):
    """TRL's /generate/ body. Unknown TRL fields (images, generation_kwargs) are accepted only when empty."""

    model_config = ConfigDict(extra="ignore")

    prompts: list[str] | list[list[int]] = Field(min_length=1)
    stop: list[str] | None = None
    logprobs: int | None = Field(0, ge=0, le=0)
    """0: return the sampled token's log-prob; null: none (top-k alternatives are not supported)."""
    return_text: bool = False
    """rcl extension: also answer each completion decoded (`completion_texts`, special tokens skipped)."""
    add_special_tokens: bool = True
    """rcl extension: whether text prompts are tokenized with the tokenizer's special tokens."""
    images: list[Any] | None = None
    structured_outputs_regex: str | None = None
    guided_decoding_regex: str | None = None
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)


class GenerateResponse(BaseModel):
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list[list[list[float]]] | None
    logprob_token_ids: list[list[list[int]]] | None
    finish_reasons: list[Literal["stop", "length"]]
    completion_texts: list[str] | None = None
    """With `return_text: true`: each completion decoded, in the order of `completion_ids`."""


IGNORED_COMPLETION_FIELDS = ("user", "store", "metadata", "parallel_tool_calls")
"""Fields that cannot change a completion here (bookkeeping, tool-call parsing that is not done)."""
NEUTRAL_COMPLETION_VALUES: dict[str, Any] = {"best_of": 1, "use_beam_search": False,
                                             "response_format": {"type": "text"}}
"""Unsupported fields sent at the value that turns them off (clients that send every default): accepted."""
ALWAYS_ON_COMPLETION_FIELDS = ("include_stop_str_in_output", "skip_special_tokens")
"""What this server always does: stop strings stay in the completion (as in HFEngine); `text` skips special tokens."""


def _same_value(value: Any, neutral: Any) -> bool:
    """Equal and of the same kind, so that `true` is not taken for `best_of: 1`."""
    numeric = (int, float)
    same_kind = isinstance(value, bool) == isinstance(neutral, bool) and (
        isinstance(value, numeric) == isinstance(neutral, numeric))
    return same_kind and value == neutral


class StreamOptions(BaseModel):
    """OpenAI's `stream_options`; read only when `stream` is true (they cannot change an unstreamed answer)."""

    include_usage: bool = False
    """A last chunk, before `[DONE]`, carries the request's usage (with empty `choices`); other chunks carry null."""
    continuous_usage_stats: bool = False
    """vLLM's extension, with `include_usage`: every chunk carries the usage so far instead of null."""


class OpenAIRequest(SamplingFields):
    """What vLLM's OpenAI-style `/v1/completions` and `/v1/chat/completions` bodies share here.

    Any field outside the supported set is refused (`unsupported_fields`) rather than silently ignored: penalties,
    prompt log-probs or structured outputs that were dropped would change what a caller gets without telling it.
    """

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        """In the OpenAI API a null field is an absent one (`"temperature": null` samples at the default)."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    model: str | None = None
    stop: str | list[str] | None = None
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool = False
    stream: bool = False
    """True: the answer comes as server-sent events (`data: {chunk}` lines, then `data: [DONE]`). Generation is
    batched, so the chunks are sent once the completions are done: one chunk per choice with its whole text."""
    stream_options: StreamOptions = Field(default_factory=StreamOptions)
    structured_outputs: dict[str, Any] | None = None

    neutral_values: ClassVar[dict[str, Any]] = NEUTRAL_COMPLETION_VALUES

    def unsupported_fields(self) -> list[str]:
        extra = self.model_extra or {}
        bad = [key for key, value in extra.items() if key not in IGNORED_COMPLETION_FIELDS
               and not (key in ALWAYS_ON_COMPLETION_FIELDS and value is True)
               and not (key in self.neutral_values and _same_value(value, self.neutral_values[key]))]
        return sorted(bad + (["structured_outputs"] if self.structured_outputs else []))

    def generate_request(self, prompts: Any, logprobs: int | None, **overrides: Any) -> GenerateRequest:
        """The request in `/generate/` form, so every route shares one validation and one engine call."""
        fields = {**self.model_dump(include=set(SamplingFields.model_fields)), **overrides}
        return GenerateRequest(prompts=prompts, stop=[self.stop] if isinstance(self.stop, str) else self.stop,
                               logprobs=logprobs, **fields)


class CompletionsRequest(OpenAIRequest):
    """The part of vLLM's `/v1/completions` body that TRL >= 1.16's `VLLMClient.generate` sends."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0)
    """0 (with echo): score the prompt only, generate nothing."""
    logprobs: int | None = Field(None, ge=0)
    """0: the sampled token's log-prob; k: also the k most likely tokens of the distribution it was sampled from
    (after temperature and filters); null: none. With echo, every token's raw log-probs are scored instead."""
    prompt_logprobs: int | None = Field(None, ge=0)
    """k: each choice also carries its prompt's per-position log-probs, the actual token's and the k most likely
    (raw, without temperature, as vLLM's default logprobs mode); null: none."""
    echo: bool = False
    """True: each choice's text and log-probs start with its prompt (the legacy way to score a text, as lm-eval's
    loglikelihood requests do); the log-probs of every token are then the model's raw ones."""
    add_special_tokens: bool = True
    """Text prompts are tokenized with the tokenizer's special tokens (a BOS), as vLLM's completions do."""

    def as_generate(self) -> GenerateRequest:
        prompts: Any = self.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        sampled_logprobs = None if self.logprobs is None else 0  # alternatives come from scoring (echo), not sampling
        return self.generate_request(prompts, sampled_logprobs, add_special_tokens=self.add_special_tokens,
                                     max_tokens=max(self.max_tokens, 1))


class ChatMessage(BaseModel):
    """One message; fields other than role and content (name, tool_calls, tool_call_id) go to the chat template."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates take it: text parts joined by newlines, as vLLM's default content format
        joins them. Any other part (an image) is refused with a ValueError."""
        content = self.content
        if isinstance(content, list):
            kinds = sorted({str(part.get("type")) for part in content} - {"text"})
            if kinds:
                raise ValueError(f"message content parts of type {kinds} are not supported by this server (text only)")
            content = "\n".join(str(part.get("text", "")) for part in content)
        return arguments_as_objects({**(self.model_extra or {}), "role": self.role, "content": content})


class ChatCompletionsRequest(OpenAIRequest):
    """The part of vLLM's `/v1/chat/completions` body that TRL's `VLLMClient.chat` and plain OpenAI clients send:
    one conversation, rendered with the tokenizer's chat template (or the request's `chat_template`), then generated
    from as `/v1/completions` generates."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)  # type: ignore[assignment]
    """None (and no max_completion_tokens): up to the server's max_tokens limit, as vLLM goes up to its context."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """OpenAI's newer name for max_tokens; it wins when both are given."""
    logprobs: bool = False
    """True: each choice carries the sampled tokens' log-probs (`logprobs.content`)."""
    top_logprobs: int | None = Field(None, ge=0)
    """k (with logprobs: true): each token also lists the k most likely tokens of the distribution it was sampled
    from, as the sampled token's log-prob is of that distribution (after temperature and filters)."""
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[dict[str, Any]] | None = None
    """Rendered into the prompt by the chat template. The calls a completion makes are read back into the message's
    `tool_calls` with `rcl serve --tool-call-parser` and `tool_choice` "auto" (the default); otherwise `tool_choice`
    must be "none" and calls stay in the text."""
    tool_choice: str | dict[str, Any] | None = None
    add_special_tokens: bool = False
    """False, as in vLLM: the chat template writes the special tokens itself, so tokenizing adds none."""

    # vLLM's echo of the last message: not supported
    neutral_values: ClassVar[dict[str, Any]] = {**NEUTRAL_COMPLETION_VALUES, "echo": False}

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.for_template() for m in self.messages]

    def as_generate(self, prompt_ids: list[int], default_max_tokens: int) -> GenerateRequest:
        max_tokens = self.max_completion_tokens or self.max_tokens or default_max_tokens
        return self.generate_request([prompt_ids], 0 if self.logprobs else None, max_tokens=max_tokens)


class TokenizeRequest(BaseModel):
    """vLLM's `/tokenize` body for a text (a body with `messages` is read as a chat request instead)."""

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    """vLLM's `/detokenize` body."""

    model: str | None = None
    tokens: list[int]


class InitCommunicatorRequest(BaseModel):
    host: str
    port: int = Field(ge=1, le=65535)
    world_size: int = Field(ge=2)
    client_device_uuid: str | None = None
    group_kind: Literal["nccl", "gloo"] | None = None
    """rcl extension: the group's kind (TRL clients send none and get the engine's default, NCCL on vLLM)."""


class TensorMeta(BaseModel):
    name: str = Field(min_length=1)
    dtype: str = Field(pattern=r"^(torch\.)?[a-z0-9_]+$")
    shape: list[int]


class UpdateBucketRequest(BaseModel):
    """One bucket broadcast over the weight group as a flat byte buffer; `tensors` splits it, in order."""

    tensors: list[TensorMeta] = Field(min_length=1)
    first: bool = True
    last: bool = True


class UpdateNamedParamRequest(TensorMeta):
    """TRL's per-tensor update: the tensor follows as a broadcast over the weight group."""


class WeightsUpdateResponse(BaseModel):
    tensors: int
    weights_version: int
    complete: bool


class MessageResponse(BaseModel):
    message: str


def sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """rcl `SamplingParams` as the sampling fields of a /generate/ request (also vLLM's `SamplingParams` keywords)."""
    return dict(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        # only when set, so that a server that does not know them (TRL's older /generate/) is not sent them
        **{name: getattr(params, name) for name in ("frequency_penalty", "presence_penalty", "logit_bias",
                                                    "min_tokens", "ignore_eos") if getattr(params, name)},
        max_tokens=params.max_tokens,
        stop=params.stop or None,
        stop_token_ids=params.stop_token_ids or None,
        seed=params.seed,
    )
