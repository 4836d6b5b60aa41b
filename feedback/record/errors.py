"""Errors raised by the feedback layer; the API layer maps them to HTTP status codes."""

from __future__ import annotations


class FeedbackError(Exception):
    """Base class of every error the feedback layer raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(FeedbackError, ValueError):
    """The caller sent something invalid (maps to 400/422); the message says what is allowed."""


class NotFound(FeedbackError, LookupError):
    """An id does not name a stored object (maps to 404)."""


class Conflict(InputError):
    """A request contradicts what is already recorded, e.g. an idempotency key reused for another choice (409)."""
