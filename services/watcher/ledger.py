"""The watcher's ledger: what was done with each slide content, kept beside the slides.

An entry per content (SHA-256) with the slide's name, state (scored, failed, queued), error and
job; and every file version seen, so none is hashed twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

LEDGER_NAME = ".mitoscope-watch.json"
SCORED, FAILED, QUEUED = "scored", "failed", "queued"


@dataclass
class Ledger:
    slides: dict[str, dict[str, str]] = field(default_factory=dict)  # sha256 -> entry
    seen: dict[str, str] = field(default_factory=dict)  # "<name>@<version>" -> sha256

    @classmethod
    def from_json(cls, text: str | bytes) -> Ledger:
        data = json.loads(text)
        if "slides" not in data:  # the first format: only the entries, keyed by digest
            return cls(slides=data)
        return cls(slides=data["slides"], seen=data.get("seen", {}))

    def to_json(self) -> str:
        return json.dumps({"slides": self.slides, "seen": self.seen}, indent=1)
