"""Security headers on every HTTP response of the app (REST routes, study pages and the mounted Gradio UI).

A plain ASGI middleware (no response buffering, so Gradio's streamed events pass through unchanged):
  X-Content-Type-Options: nosniff          browsers never guess a type (an uploaded file is never run as script)
  Referrer-Policy: no-referrer             page URLs (study ids, platform ids in the query) never leave the app
  X-Frame-Options: SAMEORIGIN              no clickjacking from other sites (older browsers) ...
  Content-Security-Policy: frame-ancestors 'self'   ... and the same for current ones; nothing else is
                                           restricted, so Gradio's own scripts and styles still load
  Cache-Control: no-store                  on JSON responses (tokens, choices) that set no caching themselves;
                                           images keep their `private, immutable` caching
A header the route already set is left as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
)
NO_STORE_TYPES = (b"application/json", b"application/x-ndjson", b"application/problem+json")


class SecurityHeadersMiddleware:
    """Adds `SECURITY_HEADERS` to every response, and `Cache-Control: no-store` to uncached JSON responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = with_security_headers(list(message.get("headers", [])))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Raw ASGI headers plus the security headers that are not already present."""
    present = {name.lower() for name, _ in headers}
    added = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
    content_type = next((value.lower() for name, value in headers if name.lower() == b"content-type"), b"")
    if b"cache-control" not in present and content_type.split(b";")[0].strip() in NO_STORE_TYPES:
        added.append((b"cache-control", b"no-store"))
    return headers + added
