"""The Kubernetes manifests parse and hang together (no cluster here: structure only)."""

from __future__ import annotations

import yaml

from tests.conftest import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"


def _documents() -> list[dict]:  # type: ignore[type-arg]
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_every_service_deployment_has_probes_resources_a_service_and_an_autoscaler() -> None:
    docs = _documents()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    autoscaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert {"tiler", "preprocess", "detector", "aggregator", "gateway", "worker", "triton"} <= set(deployments)
    assert set(deployments) - {"watcher"} <= autoscaled  # one watcher, on purpose
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] and container["resources"]["limits"], name
        if name in ("worker", "watcher"):  # no one calls them
            continue
        assert name in services
        if name != "triton":
            assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", name
            assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", name
            module = container["command"][1].split(":")[0]
            assert (REPO_ROOT / (module.replace(".", "/") + ".py")).is_file(), module


def test_triton_runs_the_gpu_configs_on_a_gpu() -> None:
    triton = next(d for d in _documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "triton")
    container = triton["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-config-name=gpu" in container["command"]
    assert (REPO_ROOT / "model_repository" / "yolov5n_mitosis" / "configs" / "gpu.pbtxt").is_file()


def test_services_that_touch_s3_get_its_keys_and_every_setting_is_one_the_code_reads() -> None:
    from services.aggregator.app import Settings as AggregatorSettings
    from services.detector.app import Settings as DetectorSettings
    from services.gateway.app import Settings as GatewaySettings
    from services.preprocess.app import Settings as PreprocessSettings
    from services.tiler.app import Settings as TilerSettings

    docs = _documents()
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    known = {
        f"{s.model_config['env_prefix']}{field.upper()}"
        for s in (AggregatorSettings, DetectorSettings, GatewaySettings, PreprocessSettings, TilerSettings)
        for field in s.model_fields
    }
    unread = {k for k in config if not k.startswith("MITOSCOPE_S3_") and k not in known}
    assert not unread, f"settings no service reads: {unread}"
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in ("tiler", "aggregator", "gateway", "worker"):
        sources = deployments[name]["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"secretRef": {"name": "mitoscope-s3"}} in sources, name


def test_only_one_single_replica_deployment_watches_the_inbox() -> None:
    docs = _documents()
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert "GATEWAY_WATCH_LOCATION" not in config  # else every gateway replica would watch
    watching = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and any(
            e["name"] == "GATEWAY_WATCH_LOCATION" for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])
        )
    ]
    assert [d["metadata"]["name"] for d in watching] == ["watcher"]
    assert watching[0]["spec"]["replicas"] == 1 and watching[0]["spec"]["strategy"]["type"] == "Recreate"
    hpas = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert "watcher" not in hpas
