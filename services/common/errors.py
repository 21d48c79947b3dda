"""One taxonomy of failures, so that every retry loop asks one question: is this worth trying again?

    MitoscopeError
     ├── TransientError   something we depend on is down, busy or slow (the object store, the
     │                    inference server, a service): the same call may succeed later
     └── PermanentError   the input or the request is wrong, or a server refused it: retrying
                          gives the same answer

Each service's own errors (`services/*/errors.py`, the object store's, the REST client's) derive
from one of the two as well as from their service's base, so a retry loop catches
`TransientError`, and a CLI maps `TransientError` to exit 3 and `PermanentError` to exit 2,
without listing classes.
"""

from __future__ import annotations

# HTTP answers that mean "later, not never": busy (429), or a dependency down or timed out.
RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})


class MitoscopeError(Exception):
    """Base of every error the project raises on purpose."""


class TransientError(MitoscopeError):
    """A dependency is down, busy or slow: worth retrying after a while."""


class PermanentError(MitoscopeError):
    """The input or request is wrong, or it was refused: retrying gives the same answer."""
