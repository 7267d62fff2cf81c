"""What every request meets before a route reads it, and what every answer carries.

Both are plain ASGI middleware: FastAPI reads a body before it runs a route's dependencies,
so a limit on bodies has to sit below the routes."""

import json
import math
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.core.settings import get_settings

BODY_LIMIT = "xal.body_limit"  # the scope key of the request's BodyLimit

# The pages load nothing from elsewhere and run no inline script or style; images fetched
# with the token are shown from blob: URLs.
POLICY = {
    "default-src": "'self'",
    "img-src": "'self' blob:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def content_security_policy(changes: dict[str, str] | None = None) -> str:
    return "; ".join(f"{name} {value}" for name, value in {**POLICY, **(changes or {})}.items())


SECURITY_HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


_SECURITY_HEADERS_RAW = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer; one that sets its own policy keeps it (/api/docs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message["headers"] = headers + [header for header in _SECURITY_HEADERS_RAW if header[0] not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class BodyLimit:
    """The most bytes a request's body may have: settings.max_json_bytes, unless its route
    raises it before reading the body (uploads: backend.api.images.UploadRoute)."""

    max_bytes: int
    setting: str
    advice: str = ""

    def exceeded(self) -> HTTPException:
        return HTTPException(413, f"the request body is larger than {self.max_bytes} bytes ({self.setting}){self.advice}")


class BodyGuard:
    """Limits every request body (BodyLimit), checking its Content-Length before reading a byte
    and counting what arrives. JSON bodies are read here whole and refused with 422 when they hold
    a number that is not finite (NaN, Infinity, 1e400): Python's parser takes them, and neither
    the database nor a JSON answer can hold them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = scope[BODY_LIMIT] = BodyLimit(get_settings().max_json_bytes, "XAL_MAX_JSON_BYTES")
        headers = Headers(scope=scope)
        receive = _limited(receive, limit, _declared_length(headers))
        if _is_json(headers):
            try:
                body = await _read_body(receive)
            except HTTPException as error:
                return await JSONResponse({"detail": error.detail}, error.status_code)(scope, receive, send)
            if body is None:
                return  # the client went away
            if _has_a_non_finite_number(body):
                return await JSONResponse({"detail": NON_FINITE}, 422)(scope, receive, send)
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


NON_FINITE = "the JSON body holds a number that is not finite (NaN, Infinity, or beyond ±1.8e308)"


def _limited(receive: Receive, limit: BodyLimit, declared: int | None) -> Receive:
    """`receive` that raises limit.exceeded() (an HTTPException, which FastAPI answers) as soon as
    the declared or the received length is over the limit in force when it is called."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        if declared is not None and declared > limit.max_bytes:
            raise limit.exceeded()
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit.max_bytes:
            raise limit.exceeded()
        return message

    return limited


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that gives the body read already, then waits on the client as usual."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _declared_length(headers: Headers) -> int | None:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _is_json(headers: Headers) -> bool:
    """The content types FastAPI parses as JSON."""
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    return media_type.startswith("application/") and (media_type == "application/json" or media_type.endswith("+json"))


class _NotFinite(Exception):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite
    return value


def _refuse_constant(_name: str) -> float:
    raise _NotFinite


# built once: json.loads with hooks builds a decoder at every call
_FINITE_JSON = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)


def _has_a_non_finite_number(body: bytes) -> bool:
    try:
        _FINITE_JSON.decode(body.decode(json.detect_encoding(body), "surrogatepass"))  # as json.loads does
    except _NotFinite:
        return True
    except (ValueError, RecursionError):
        return False  # not JSON at all: FastAPI answers that
    return False
