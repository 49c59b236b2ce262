"""Access levels: each handler declares whether it is public; every other one needs a session.

Admin handlers live in the admin sub-app, whose own middleware admits administrators only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

Handler = TypeVar("Handler", bound=Callable[..., Any])


class Access(enum.Enum):
    PUBLIC = "public"
    SIGNED_IN = "signed_in"


def _declare(access: Access) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.__access__ = access  # type: ignore[attr-defined]
        return handler

    return mark


public = _declare(Access.PUBLIC)


def access_of(handler: Callable[..., Any]) -> Access:
    """What `handler` declared; an undeclared handler needs a session (fail closed)."""
    access: Access = getattr(handler, "__access__", Access.SIGNED_IN)
    return access


def rate_limited(handler: Handler) -> Handler:
    """Count every request to `handler` against its client IP's login rate limit."""
    handler.__rate_limited__ = True  # type: ignore[attr-defined]
    return handler


def is_rate_limited(handler: Callable[..., Any]) -> bool:
    return getattr(handler, "__rate_limited__", False) is True
