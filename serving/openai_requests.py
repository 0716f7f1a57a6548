"""The request bodies of POST /v1/completions and /v1/chat/completions, checked at the gateway.

Only known OpenAI fields (and a few numeric vLLM sampling extras) pass, each with its type and range:
vLLM accepts more (a request-supplied `chat_template`, guided decoding, `lora_request`), some of it
dangerous in tenants' hands, and some malformed values reach it as 5xx errors or stalls. A body that fails
here is a 400 naming the field (`param`) and never reaches the engine; one that passes is forwarded as the
client sent it (the parsed dict, no defaults added).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from common.errors import InvalidRequest
from serving.request_body import load_json
from serving.settings import MAX_STREAM_INTERVAL

MAX_N = 16  # choices per request (n, best_of)
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MAX_STOP, MAX_STOP_CHARS = 4, 256  # OpenAI's limit on stop sequences
MAX_PROMPTS = 64  # prompts in one completions request
MAX_MESSAGES, MAX_PARTS = 1024, 64  # chat messages, content parts per message
MAX_TEXT = 1024 * 1024  # characters of one text (the body limit usually binds first)
MAX_LOGIT_BIAS = 1024  # biased tokens
MAX_TOOLS = 128
MAX_DEPTH = 32  # nesting of the body (JSON schemas of tools included)
INT64 = (-(2**63), 2**63 - 1)

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Short = Annotated[str, Field(max_length=256)]
Prob = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Positive = Annotated[int, Field(ge=1)]
Stop = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


@dataclass(frozen=True)
class Limits:
    """What a body is checked against besides fixed ranges: the served model's context and vocabulary."""

    context: int  # tokens the engine holds for one sequence (prompt and output)
    vocab: int | None = None  # token ids are below this; None: unknown, not checked


@lru_cache(maxsize=8)
def model_limits(base_model: Path | None, max_model_len: int) -> Limits:
    """The limits of the engine serving `base_model` (a Hugging Face directory) with `--max-model-len`: the
    context is the smaller of that and the model's `max_position_embeddings`; the vocabulary its `vocab_size`."""
    config: dict = {}
    if base_model is not None:
        try:
            config = json.loads((Path(base_model) / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        if isinstance(config.get("text_config"), dict):  # multimodal configs keep the language model's sizes there
            config = {**config["text_config"], **config}
    positions, vocab = config.get("max_position_embeddings"), config.get("vocab_size")
    context = min(max_model_len, positions) if isinstance(positions, int) and positions > 0 else max_model_len
    return Limits(context=context, vocab=vocab if isinstance(vocab, int) and vocab > 0 else None)


class _Strict(BaseModel):
    # strict: "false" is not a bool nor "1" a number, so the engine reads the forwarded body as checked here
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def _limits(info: ValidationInfo) -> Limits:
    return (info.context or {}).get("limits") or Limits(context=2**31)


def _token_ids(ids: list, limits: Limits, where: str) -> None:
    if not ids:
        raise ValueError(f"{where} is an empty list of token ids")
    if len(ids) > limits.context:
        raise ValueError(f"{where} has {len(ids)} token ids; the model's context is {limits.context} tokens")
    top = limits.vocab if limits.vocab is not None else 2**31
    for t in ids:
        if type(t) is not int or not 0 <= t < top:
            raise ValueError(f"{where} holds {str(t)[:40]!r}: token ids are integers from 0 to {top - 1}")


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class _Sampling(_Strict):
    """Fields both endpoints take."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Positive | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stream_interval: Annotated[int, Field(ge=1, le=MAX_STREAM_INTERVAL)] | None = None  # vLLM: tokens per chunk
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int, Field(ge=INT64[0], le=INT64[1])] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]],
                          Field(max_length=MAX_LOGIT_BIAS,  # keys: token ids (checked by _bias_keys)
                                json_schema_extra={"propertyNames": {"pattern": "^[0-9]{1,10}$"}})] | None = None
    user: Short | None = None
    # vLLM sampling extras that are plain numbers
    top_k: Annotated[int, Field(ge=-1, le=2**31 - 1)] | None = None
    min_p: Prob | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, bias: dict | None, info: ValidationInfo) -> dict | None:
        top = _limits(info).vocab or 2**31
        for key in bias or {}:
            if not re.fullmatch(r"[0-9]{1,10}", key) or int(key) >= top:
                raise ValueError(f"key {key[:40]!r} is not a token id: keys are token ids from 0 to {top - 1}")
        return bias

    @model_validator(mode="after")
    def _within_context(self, info: ValidationInfo) -> _Sampling:
        if self.stream_options is not None and self.stream is not True:
            raise InvalidRequest("stream_options apply to streamed requests only: send 'stream': true or drop "
                                 "stream_options", param="stream_options")
        context = _limits(info).context
        for name in ("max_tokens", "max_completion_tokens", "min_tokens"):
            value = getattr(self, name, None)
            if value is not None and value > context:
                raise InvalidRequest(f"{name} is {value}: the model's context is {context} tokens (prompt and "
                                     "output together); ask for fewer", param=name)
        return self


_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
# what _prompt accepts, for /openapi.json (the validator also checks the context and the vocabulary)
_PROMPT_SCHEMA = {"anyOf": [
    {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
    {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
     "minItems": 1, "maxItems": MAX_PROMPTS},
    _TOKEN_IDS,
    {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": MAX_PROMPTS},
]}


class CompletionBody(_Sampling):
    prompt: Annotated[Any, WithJsonSchema(_PROMPT_SCHEMA)]
    echo: bool | None = None
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    suffix: Text | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt: Any, info: ValidationInfo) -> Any:
        """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
        limits = _limits(info)
        if isinstance(prompt, str):
            if not prompt or len(prompt) > MAX_TEXT:
                raise ValueError(f"the prompt must have 1 to {MAX_TEXT} characters")
            return prompt
        if not isinstance(prompt, list) or not prompt:
            raise ValueError("the prompt must be a string, a list of strings, a list of token ids or a list of "
                             "lists of token ids, and not empty")
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            _token_ids(prompt, limits, "the prompt")
            return prompt
        if len(prompt) > MAX_PROMPTS:
            raise ValueError(f"{len(prompt)} prompts in one request: at most {MAX_PROMPTS}")
        for i, p in enumerate(prompt):
            if isinstance(p, list):
                _token_ids(p, limits, f"prompt {i}")
            elif not isinstance(p, str) or not p or len(p) > MAX_TEXT:
                raise ValueError(f"prompt {i} must be a non-empty string (at most {MAX_TEXT} characters) or a "
                                 "list of token ids, like the others")
        if len({type(p) for p in prompt}) > 1:
            raise ValueError("a list of prompts holds either strings or lists of token ids, not both")
        return prompt

    @model_validator(mode="after")
    def _best_of(self) -> CompletionBody:
        if self.best_of is not None and self.best_of < (self.n or 1):
            raise InvalidRequest(f"best_of ({self.best_of}) must be at least n ({self.n})", param="best_of")
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class FunctionCall(_Strict):
    name: Short
    arguments: Text


class ToolCall(_Strict):
    id: Short
    type: Literal["function"]
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text | Annotated[list[TextPart], Field(max_length=MAX_PARTS)] | None = None
    name: Short | None = None
    tool_call_id: Short | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None


class FunctionDef(_Strict):
    name: Short
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: Short


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatBody(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Positive | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


BODIES: dict[str, type[_Sampling]] = {"/v1/completions": CompletionBody, "/v1/chat/completions": ChatBody}
COMPLETION_FIELDS = frozenset(CompletionBody.model_fields)
CHAT_FIELDS = frozenset(ChatBody.model_fields)
REQUIRED = {"/v1/completions": "prompt", "/v1/chat/completions": "messages"}


def parse_body(raw: bytes, path: str, limits: Limits) -> dict:
    """The JSON object of `raw` if it is a valid request body for `path`, else InvalidRequest (400) naming
    the field. The dict is returned as parsed, to be forwarded as the client sent it."""
    body = check_fields(load_json(raw, MAX_DEPTH), REQUIRED[path])
    try:
        BODIES[path].model_validate(body, context={"limits": limits})
    except ValidationError as e:
        raise _invalid(e) from None
    return body


def check_fields(body: object, required: str) -> dict:
    """Return `body` if it is a JSON object of known fields with a string `model` and `required`; unknown
    fields are refused by name (the list of known ones is in the message)."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    allowed = COMPLETION_FIELDS if required == "prompt" else CHAT_FIELDS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unsupported field(s) {', '.join(unknown)[:500]}: remove them "
                             f"(supported: {', '.join(sorted(allowed))})", param=unknown[0][:100])
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("'model' is required: an adapter name, NAME@ALIAS, NAME@VERSION, or 'base'",
                             param="model")
    if required not in body:
        raise InvalidRequest(f"'{required}' is required", param=required)
    return body


_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none)$|[\[\-]")  # pydantic's union branch labels in `loc`


def _invalid(error: ValidationError) -> InvalidRequest:
    """The first problem of `error` as a 400 naming the field, e.g. `messages.0.role`; param: the top field."""
    problems = error.errors(include_url=False)
    # in a union, the branch that got furthest says most, and a broken rule more than a wrong type
    first = max(problems, key=lambda p: (len(p["loc"]), not p["type"].endswith("_type")))
    loc = [str(part) for part in first["loc"] if isinstance(part, int) or not _TYPE_TAG.search(str(part))]
    where = ".".join(loc) or "body"
    message = str(first["msg"]).removeprefix("Value error, ")
    return InvalidRequest(f"invalid {where[:200]}: {message[:500]}", param=loc[0][:100] if loc else None)
