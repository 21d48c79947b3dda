"""One configuration for the gateway and its workers: the same job database, the same defaults."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.options import DEFAULT_FIELD_DIAMETER_MM
from services.gateway import worker
from services.gateway.database import make_engine
from services.gateway.jobs import FAILED, SUCCEEDED, JobStore
from services.gateway.orchestrate import ServiceUrls, score_via_services
from services.gateway.settings import Settings
from services.gateway.worker import RetryPolicy, WorkerConfig, run_worker
from tests.gateway.stubs import STUB_MODEL, StubScript, stub_services, unused_url


@pytest.fixture
def no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def stubs() -> Iterator[tuple[ServiceUrls, StubScript]]:
    script = StubScript()
    with stub_services(script) as urls:
        yield urls, script


def test_a_worker_started_with_defaults_sees_the_gateways_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_gateway_environment: None
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = make_engine(Settings().database_url)  # where a gateway started with defaults keeps its jobs
    job, _ = JobStore(engine).create("case.svs", "m", {})
    # The gateway's environment, less its database: the services are down, so the job fails at once.
    for name in ("tiler", "preprocess", "detector", "aggregator"):
        monkeypatch.setenv(f"GATEWAY_{name.upper()}_URL", unused_url())
    monkeypatch.setenv("GATEWAY_RETRY_BUDGET_S", "0")
    worker.main(["--stop-when-idle"])
    claimed = JobStore(engine).get(job.id)
    engine.dispose()
    assert claimed.attempts == 1 and claimed.state == FAILED, claimed
    assert claimed.error is not None and "still failing" in claimed.error


def test_a_job_without_a_field_diameter_is_graded_with_the_default(
    tmp_path: Path, stubs: tuple[ServiceUrls, StubScript]
) -> None:
    urls, script = stubs
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    store = JobStore(engine)
    job, _ = store.create("case.svs", STUB_MODEL, {})  # options from a client that sent none
    run_worker(store, "w", urls, WorkerConfig(retry=RetryPolicy(budget_s=0)), stop_when_idle=True)
    assert store.get(job.id).state == SUCCEEDED, store.get(job.id).error
    engine.dispose()
    assert [m.field_diameter_mm for m in script.aggregated] == [DEFAULT_FIELD_DIAMETER_MM]


def test_scoring_through_the_services_grades_with_the_default_field_diameter(
    stubs: tuple[ServiceUrls, StubScript],
) -> None:
    urls, script = stubs
    result = score_via_services("case.svs", urls, STUB_MODEL)
    assert [m.field_diameter_mm for m in script.aggregated] == [DEFAULT_FIELD_DIAMETER_MM]
    assert result["provenance"]["parameters"]["field_diameter_mm"] == DEFAULT_FIELD_DIAMETER_MM


@pytest.mark.parametrize("variable", ["GATEWAY_UPLOAD_LOCATION", "GATEWAY_RESULTS_LOCATION", "GATEWAY_WATCH_LOCATION"])
def test_a_malformed_s3_location_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, no_gateway_environment: None, variable: str
) -> None:
    monkeypatch.setenv(variable, "s3:///inbox")
    with pytest.raises(ValidationError, match="not a well-formed S3 location"):
        Settings()
    with pytest.raises(SystemExit):  # the worker says so and stops, as for any bad flag
        worker.main(["--stop-when-idle"])
