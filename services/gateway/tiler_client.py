"""The gateway's one direct call to a service: the tiler's picture of a slide, for `overview.png`.

What the tiler answers is passed on, not reworded: it has no such slide (404) or refuses it (422)
with its own code; it is down, busy or timed out (503); anything else it answers is a bad gateway
(502), since the caller cannot fix it.
"""

from __future__ import annotations

import httpx

from services.gateway.errors import (
    BadGatewayError,
    DependencyError,
    DependencyNotFoundError,
    DependencyRefusedError,
    DependencyUnavailableError,
)
from services.gateway.orchestrate import ServiceError, check_response

OVERVIEW_TIMEOUT_S = 120.0  # the tiler reads a whole pyramid level of a slide it may first fetch from S3


def dependency_error(error: ServiceError) -> DependencyError:
    """The gateway error that passes on a service's error answer."""
    if error.transient:
        return DependencyUnavailableError(f"{error}; try again later")
    if error.status == 404:
        return DependencyNotFoundError(str(error), error.code)
    if error.status == 422:
        return DependencyRefusedError(str(error), error.code)
    return BadGatewayError(str(error))


class TilerClient:
    def __init__(
        self, url: str, timeout_s: float = OVERVIEW_TIMEOUT_S, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url
        self._client = httpx.Client(base_url=url, timeout=timeout_s, transport=transport)

    def overview_png(self, location: str, what: str) -> bytes:
        """The slide's picture (PNG); `what` names the request in errors."""
        try:
            response = self._client.get("/v1/overview.png", params={"location": location})
        except httpx.TransportError as e:
            raise DependencyUnavailableError(f"{what}: the tiler at {self.url} cannot be reached: {e}") from e
        try:
            return check_response(response, what).content
        except ServiceError as e:
            raise dependency_error(e) from e

    def close(self) -> None:
        self._client.close()
