"""The gateway asks the detector, at submit, whether it serves the model a job names.

A model it does not serve is refused at once (422 unknown_model) instead of failing the job
later. A detector that cannot be asked now (down, busy, slow) does not refuse anything: the job
waits for it, as jobs wait out every outage.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from services.gateway.errors import UnknownModelError

MODEL_CHECK_TIMEOUT_S = 10.0  # the detector opens a model on first use: an ONNX load or a Triton call


class DetectorClient:
    def __init__(
        self, url: str, timeout_s: float = MODEL_CHECK_TIMEOUT_S, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url
        self._client = httpx.Client(base_url=url, timeout=timeout_s, transport=transport)

    def check_model(self, name: str) -> None:
        """Raise UnknownModelError when the detector answers that it has no model `name`."""
        try:
            response = self._client.get(f"/v1/models/{quote(name, safe='')}")
        except httpx.TransportError:
            return  # cannot ask now: the job will
        if response.status_code == 404:
            try:
                detail = response.json().get("message", response.text)
            except ValueError:
                detail = response.text
            raise UnknownModelError(f"model {name!r}: {detail}")
        # Anything else (the model described, or the detector busy or failing): the job will see.

    def close(self) -> None:
        self._client.close()
