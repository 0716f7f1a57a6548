"""The seam between forwarding and an engine: what a transport is sent, and what it answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from registry.manifest import Manifest


@dataclass
class EngineCall:
    """One inference request as forwarding hands it over, after admission and resolution."""

    tenant: str
    path: str  # /v1/completions or /v1/chat/completions
    body: dict  # the client's body (with the usage chunk asked for); `model` is still the public name
    stream: bool
    manifest: Manifest | None = None  # the resolved adapter; None for the base model or a tenant's own model
    lora: str | None = None  # the adapter's engine-side name
    releases: list[Callable[[], None]] = field(default_factory=list)  # run once when the request ends


class Reply(ABC):
    """The engine's answer: a status (and response headers to add), then a whole body or SSE lines."""

    status: int
    headers: dict[str, str] | None = None

    @abstractmethod
    async def json(self) -> object:
        """The whole answer's JSON value (None when it is not JSON); a LoraplexError if the connection broke."""

    @abstractmethod
    def lines(self) -> AsyncGenerator[str, None]:
        """The SSE lines as they come; a LoraplexError if the stream breaks."""

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The SSE stream's bytes as they come, cut anywhere (what the relay reads); a LoraplexError if the
        stream breaks. By default the lines, each with its newline back."""
        async for line in self.lines():
            yield line.encode() + b"\n"

    def text(self) -> str:
        """Some of a non-JSON answer's text, for the error message ('' when none is kept)."""
        return ""

    @abstractmethod
    async def close(self) -> None:
        """Release the engine side: on a stream the client left, the engine aborts the request. Idempotent."""


class Transport(ABC):
    """Sends engine calls; everything around the call (admission, ticket, relay) is forwarding's."""

    @abstractmethod
    async def send(self, call: EngineCall) -> Reply:
        """Send `call`, returning once the engine answered with a status. Errors are LoraplexErrors."""

    @abstractmethod
    async def probe(self) -> None:
        """A real generate on the base model (readiness); raises a LoraplexError saying what failed."""

    def serves_as_is(self, tenant: str, model: str) -> bool:
        """True if `model` reaches an engine of `tenant`'s own unresolved (separate-model mode)."""
        return False

    async def open(self) -> None:  # noqa: B027 - an optional hook: most transports have nothing to open
        """At start-up, when the gateway does not start the engine itself; never fails."""

    async def aclose(self) -> None:  # noqa: B027 - an optional hook, like open
        """At shutdown."""
