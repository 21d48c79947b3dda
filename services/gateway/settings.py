"""The gateway's configuration: one `Settings`, from `GATEWAY_*` environment variables.

The gateway (`create_app`) and the job workers (`python -m services.gateway.worker`) both build
theirs from it, so a worker started with defaults works on the gateway's job database, with the
same services, retry budget and results location. Built when a process starts, never at import.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.objectstore import is_s3_uri
from services.common.options import DEFAULT_MODEL_NAME
from services.gateway.jobs import DEFAULT_LEASE_S
from services.gateway.locations import check_s3_uri
from services.gateway.orchestrate import DEFAULT_BATCHES_IN_FLIGHT, ServiceUrls
from services.gateway.retry import DEFAULT_RETRY_BUDGET_S
from services.watcher import DEFAULT_SETTLE_S

DEFAULT_DATABASE_URL = "sqlite:///mitoscope-gateway.db"
MAX_UPLOAD_BYTES = 20 * 1024**3
DEFAULT_WATCH_POLL_S = 5.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_")

    database_url: str = Field(default=DEFAULT_DATABASE_URL, description="the job database (SQLite or PostgreSQL)")
    slide_root: Path = Path("slides")
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    upload_location: str = Field(default="", description="s3://bucket/prefix for uploads; empty: the slide root")
    tiler_url: str = "http://127.0.0.1:8101"
    preprocess_url: str = "http://127.0.0.1:8102"
    detector_url: str = "http://127.0.0.1:8103"
    aggregator_url: str = "http://127.0.0.1:8104"
    default_model: str = DEFAULT_MODEL_NAME
    worker_threads: int = Field(default=1, ge=0, description="workers in the gateway; 0 with separate worker processes")
    lease_s: float = Field(default=DEFAULT_LEASE_S, gt=0, description="how long a job's lease lasts unrenewed")
    batches_in_flight: int = Field(default=DEFAULT_BATCHES_IN_FLIGHT, ge=1)
    retry_budget_s: float = Field(default=DEFAULT_RETRY_BUDGET_S, ge=0)
    watch_location: str = Field(
        default="",
        description="s3://bucket/prefix, or a folder under the slide root, whose new slides become jobs; the "
        "aggregator's output root must be the slide root for a folder",
    )
    watch_poll_s: float = DEFAULT_WATCH_POLL_S
    watch_settle_s: float = DEFAULT_SETTLE_S
    results_location: str = Field(
        default="", description="s3://bucket/prefix where each job's exports are written, under its id"
    )

    @field_validator("upload_location", "watch_location", "results_location")
    @classmethod
    def _well_formed_s3_prefix(cls, value: str) -> str:
        return check_s3_uri(value, key_required=False) if is_s3_uri(value) else value

    def service_urls(self) -> ServiceUrls:
        return ServiceUrls(self.tiler_url, self.preprocess_url, self.detector_url, self.aggregator_url)
