"""Static checks of the compose stack against the code it runs; no Docker engine needed.

Each test reads docker-compose.yml, deploy/Dockerfile or a Prometheus or
Grafana file and checks it against what the tagger really offers: its CLI, its
settings, its metric names and labels. A renamed metric, setting or command
breaks one of them before anyone starts the stack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from faust.sensors.prometheus import FaustMetrics
from prometheus_client import CollectorRegistry

from tagger.errors import ConfigError
from tagger.streams.config import Settings
from tagger.streams.metrics import TaggerMetrics

_REPO = Path(__file__).resolve().parents[2]
_COMPOSE = _REPO / "docker-compose.yml"
_DOCKERFILE = _REPO / "deploy" / "Dockerfile"
_DOCKERIGNORE = _REPO / "deploy" / "Dockerfile.dockerignore"
_PROMETHEUS = _REPO / "deploy" / "prometheus" / "prometheus.yml"
_GRAFANA = _REPO / "deploy" / "grafana"
_DASHBOARD = _GRAFANA / "dashboards" / "customer-tagger.json"

_EXPECTED_SERVICES = frozenset(
    {"kafka", "redis", "topics", "worker-1", "worker-2", "prometheus", "grafana"}
)
# streams/app.py passes this prefix to Faust's Prometheus sensor.
_FAUST_PREFIX = "faust"
# Series that Prometheus itself adds for every target, with their labels.
_PROMETHEUS_SERIES = {"up": frozenset({"job", "instance"})}
_TARGET_LABELS = frozenset({"job", "instance"})
# Sample names prometheus_client exposes for one metric family, by its type.
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
_PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
# The healthcheck subprocess starts Python and makes one request to loopback.
_HEALTHCHECK_TIMEOUT_S = 15.0
_HELP_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(_COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), "docker-compose.yml is not a YAML mapping"
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services mapping"
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _dockerfile_instructions(_DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tagger_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services built from deploy/Dockerfile, which run the `tagger` command."""
    return {name: spec for name, spec in services.items() if "build" in spec}


# -- the compose file -------------------------------------------------------------


def test_compose_has_expected_services(services: dict[str, dict[str, Any]]) -> None:
    missing = _EXPECTED_SERVICES - set(services)

    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_bind_mounts_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for source, _target in _volume_mounts(spec):
            if not source.startswith((".", "/")):
                continue
            path = (_COMPOSE.parent / source).resolve()

            assert path.exists(), f"service {name} mounts {source}, which does not exist"


def test_named_volumes_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, spec in services.items():
        for source, _target in _volume_mounts(spec):
            if source.startswith((".", "/")):
                continue

            assert source in declared, f"service {name} uses undeclared volume {source!r}"


def test_build_files_exist(tagger_services: dict[str, dict[str, Any]]) -> None:
    assert tagger_services, "no service builds the tagger image"
    for name, spec in tagger_services.items():
        context = _COMPOSE.parent / spec["build"]["context"]
        dockerfile = context / spec["build"]["dockerfile"]

        assert context.is_dir(), f"service {name}: build context {context} is not a folder"
        assert dockerfile.resolve() == _DOCKERFILE, f"service {name} builds from {dockerfile}"


def test_ports_published_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (
                f"service {name} publishes {port!r} on every interface; prefix it with 127.0.0.1:"
            )


def test_tagger_env_names_are_settings(tagger_services: dict[str, dict[str, Any]]) -> None:
    allowed = _settings_env_names()
    for name, spec in tagger_services.items():
        unknown = set(_environment(spec)) - allowed

        assert not unknown, f"service {name} sets env vars no setting reads: {sorted(unknown)}"


def test_tagger_env_values_valid(tagger_services: dict[str, dict[str, Any]]) -> None:
    for name, spec in tagger_services.items():
        try:
            Settings.from_env(_environment(spec))
        except ConfigError as exc:
            pytest.fail(f"service {name} has invalid settings: {exc}")


def test_workers_share_app_id(tagger_services: dict[str, dict[str, Any]]) -> None:
    workers = _worker_services(tagger_services)
    app_ids = {_environment(spec).get("TAGGER_APP_ID") for spec in workers.values()}

    assert len(workers) == 2, f"expected two worker services, found {sorted(workers)}"
    assert len(app_ids) == 1, f"workers have different TAGGER_APP_ID values: {app_ids}"


def test_workers_have_own_data_volumes(tagger_services: dict[str, dict[str, Any]]) -> None:
    workers = _worker_services(tagger_services)
    data_volumes = []
    for name, spec in workers.items():
        data_dir = _environment(spec).get("TAGGER_DATA_DIR", "/var/lib/tagger")
        sources = [source for source, target in _volume_mounts(spec) if target == data_dir]

        assert len(sources) == 1, f"worker {name} mounts no volume at its data dir {data_dir}"
        data_volumes.append(sources[0])

    assert len(set(data_volumes)) == len(data_volumes), f"workers share volumes: {data_volumes}"


def test_workers_bind_all_interfaces(tagger_services: dict[str, dict[str, Any]]) -> None:
    for name, spec in _worker_services(tagger_services).items():
        assert _environment(spec).get("TAGGER_WEB_HOST") == "0.0.0.0", (
            f"worker {name} does not set TAGGER_WEB_HOST=0.0.0.0, so Prometheus cannot reach it"
        )


def test_workers_keep_standby_replica(tagger_services: dict[str, dict[str, Any]]) -> None:
    for name, spec in _worker_services(tagger_services).items():
        assert _environment(spec).get("TAGGER_STANDBY_REPLICAS") == "1", (
            f"worker {name} does not set TAGGER_STANDBY_REPLICAS=1"
        )


def test_workers_wait_for_dependencies(tagger_services: dict[str, dict[str, Any]]) -> None:
    expected = {
        "kafka": "service_healthy",
        "redis": "service_healthy",
        "topics": "service_completed_successfully",
    }
    for name, spec in _worker_services(tagger_services).items():
        conditions = {
            dependency: details.get("condition")
            for dependency, details in spec.get("depends_on", {}).items()
        }

        assert conditions == expected, f"worker {name} depends_on {conditions}"


def test_topics_runs_after_kafka(tagger_services: dict[str, dict[str, Any]]) -> None:
    topics = tagger_services["topics"]
    depends_on = topics.get("depends_on", {})

    assert topics["command"] == ["topics", "create"]
    assert depends_on.get("kafka", {}).get("condition") == "service_healthy"


def test_healthy_conditions_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        for dependency, details in spec.get("depends_on", {}).items():
            if details.get("condition") != "service_healthy":
                continue
            healthcheck = services[dependency].get("healthcheck")
            # Tagger services inherit the image's HEALTHCHECK.
            has_check = "build" in services[dependency] or (
                healthcheck is not None and not healthcheck.get("disable", False)
            )

            assert has_check, f"{name} waits for {dependency} to be healthy, which has no check"


# -- the image --------------------------------------------------------------------


def test_dockerfile_entrypoint_and_cmd(dockerfile: list[tuple[str, str]]) -> None:
    entrypoint = _json_instruction(dockerfile, "ENTRYPOINT")
    cmd = _json_instruction(dockerfile, "CMD")

    assert entrypoint == ["tagger"]
    assert cmd == ["worker"]


def test_dockerfile_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    users = [arguments for instruction, arguments in dockerfile if instruction == "USER"]

    assert users, "the Dockerfile sets no USER, so the worker runs as root"
    assert users[-1] not in ("root", "0"), f"the final USER is {users[-1]}"


def test_dockerfile_exposes_web_port(dockerfile: list[tuple[str, str]]) -> None:
    exposed = [arguments for instruction, arguments in dockerfile if instruction == "EXPOSE"]

    assert exposed == [str(Settings().web_port)]


@pytest.mark.parametrize(
    "command",
    [["worker"], ["topics"], ["topics", "create"]],
    ids=["worker", "topics", "topics-create"],
)
def test_image_command_help_runs(command: list[str], dockerfile: list[tuple[str, str]]) -> None:
    entrypoint = _json_instruction(dockerfile, "ENTRYPOINT")
    executable = _installed_command(entrypoint[0])

    result = subprocess.run(
        [executable, *entrypoint[1:], *command, "--help"],
        capture_output=True,
        text=True,
        timeout=_HELP_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-2000:]


def test_compose_commands_are_known(
    tagger_services: dict[str, dict[str, Any]], dockerfile: list[tuple[str, str]]
) -> None:
    known = {("worker",), ("topics", "create")}
    default = tuple(_json_instruction(dockerfile, "CMD"))
    for name, spec in tagger_services.items():
        command = tuple(spec.get("command", default))

        assert command in known, f"service {name} runs {command}, which no test here covers"


def test_healthcheck_passes_on_healthz(dockerfile: list[tuple[str, str]]) -> None:
    with _web_server(healthy=True) as port:
        result = _run_healthcheck(dockerfile, port)

    assert result.returncode == 0, result.stderr[-2000:]


def test_healthcheck_fails_without_healthz(dockerfile: list[tuple[str, str]]) -> None:
    with _web_server(healthy=False) as port:
        result = _run_healthcheck(dockerfile, port)

    assert result.returncode != 0


def test_dockerignore_keeps_package_sources() -> None:
    pyproject = tomllib.loads((_REPO / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = pyproject["tool"]["setuptools"]["package-dir"].values()
    # setup.py compiles the rules engine; without it the image runs it pure.
    needed = {"pyproject.toml", "setup.py", *(Path(folder).parts[0] for folder in package_dirs)}
    kept = {
        line.removeprefix("!").strip("/")
        for line in _DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }

    assert needed <= kept, f"the build context leaves out {sorted(needed - kept)}"


# -- Prometheus and Grafana ---------------------------------------------------------


def test_prometheus_scrapes_every_worker(
    tagger_services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load(_PROMETHEUS.read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    expected = {
        f"{name}:{_environment(spec).get('TAGGER_WEB_PORT', Settings().web_port)}"
        for name, spec in _worker_services(tagger_services).items()
    }

    assert targets == expected


def test_prometheus_scrapes_metrics_path() -> None:
    config = yaml.safe_load(_PROMETHEUS.read_text(encoding="utf-8"))
    paths = {job.get("metrics_path", "/metrics") for job in config["scrape_configs"]}

    assert paths == {"/metrics"}


def test_dashboard_uses_provisioned_datasource() -> None:
    provisioned = set()
    for path in sorted((_GRAFANA / "provisioning" / "datasources").glob("*.yml")):
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            provisioned.add(source["uid"])
    used = {panel["datasource"]["uid"] for panel in _dashboard_panels() if "datasource" in panel}

    assert used, "no dashboard panel names a datasource"
    assert used <= provisioned, f"panels use datasources {used - provisioned}, never provisioned"


def test_dashboard_folder_is_mounted(services: dict[str, dict[str, Any]]) -> None:
    provider_paths = set()
    for path in sorted((_GRAFANA / "provisioning" / "dashboards").glob("*.yml")):
        for provider in yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]:
            provider_paths.add(provider["options"]["path"])
    mounted = {
        target
        for source, target in _volume_mounts(services["grafana"])
        if (_COMPOSE.parent / source).resolve() == _DASHBOARD.parent
    }

    assert provider_paths, "no Grafana dashboard provider is provisioned"
    assert provider_paths <= mounted, f"providers read {provider_paths}, compose mounts {mounted}"


def test_dashboard_metrics_exist() -> None:
    exported = _exported_metrics()
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            unknown = _promql_metric_names(target["expr"]) - set(exported)

            assert not unknown, (
                f"panel {panel['title']!r} queries {sorted(unknown)}, which no worker exports"
            )


def test_dashboard_labels_exist() -> None:
    exported = _exported_metrics()
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            expression = target["expr"]
            known: set[str] = set(_TARGET_LABELS)
            for metric in _promql_metric_names(expression) & set(exported):
                known |= exported[metric]
            unknown = _promql_label_names(expression) - known

            assert not unknown, f"panel {panel['title']!r} uses unknown labels {sorted(unknown)}"


def test_dashboard_covers_requested_metrics() -> None:
    used = set()
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            used |= _promql_metric_names(target["expr"])
    requested = {
        "tagger_events_total",
        "tagger_invalid_events_total",
        "tagger_tag_changes_total",
        "tagger_late_events_total",
        "tagger_mirror_writes_total",
        "tagger_mirror_pending",
        "tagger_batch_seconds_bucket",
        "tagger_partition_clock_ms",
        "tagger_partition_lag",
        "tagger_errors_total",
    }

    assert requested <= used, f"the dashboard shows no panel for {sorted(requested - used)}"


# -- helpers ------------------------------------------------------------------------------


def _volume_mounts(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (source, target) of each of a service's volumes, short or long syntax."""
    mounts = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((str(volume["source"]), str(volume["target"])))
            continue
        source, target, *_mode = str(volume).split(":")
        mounts.append((source, target))
    return mounts


def _environment(spec: dict[str, Any]) -> dict[str, str]:
    """Return a service's environment as a mapping, from either compose syntax."""
    raw = spec.get("environment") or {}
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {name: value for name, _sep, value in pairs}
    return {str(name): str(value) for name, value in raw.items()}


def _settings_env_names() -> set[str]:
    names = {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}
    for spec in dataclasses.fields(Settings):
        if spec.name in ("extra", "kafka_bootstrap_servers", "redis_url"):
            continue
        names.add("TAGGER_" + spec.name.upper())
    return names


def _worker_services(tagger_services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in tagger_services.items()
        if spec.get("command", ["worker"])[:1] == ["worker"]
    }


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs; continuation lines are joined, comments dropped."""
    instructions = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        instruction, _sep, arguments = full.partition(" ")
        instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def _json_instruction(instructions: list[tuple[str, str]], name: str) -> list[str]:
    """Return the exec-form (JSON array) arguments of the last `name` instruction."""
    found = [arguments for instruction, arguments in instructions if instruction == name]
    assert found, f"the Dockerfile has no {name}"
    parsed = json.loads(found[-1])
    assert isinstance(parsed, list), f"{name} is not in exec form: {found[-1]}"
    return [str(part) for part in parsed]


def _installed_command(name: str) -> str:
    """Return the path of a console script installed beside this Python, else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found is not None, f"`{name}` is not installed: run `pip install .` first"
    return found


def _run_healthcheck(
    instructions: list[tuple[str, str]], port: int
) -> subprocess.CompletedProcess[str]:
    healthchecks = [args for instruction, args in instructions if instruction == "HEALTHCHECK"]
    assert healthchecks, "the Dockerfile has no HEALTHCHECK"
    _options, _sep, command = healthchecks[-1].partition("CMD ")
    argv = json.loads(command)
    assert argv[0] == "python", f"the health check runs {argv[0]}, not python"

    return subprocess.run(
        [sys.executable, *argv[1:]],
        env={**os.environ, "TAGGER_WEB_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=_HEALTHCHECK_TIMEOUT_S,
        check=False,
    )


class _HealthzHandler(http.server.BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:
        if self.path == "/healthz" and self.healthy:
            body = b'{"status": "ok"}'
            self.send_response(200)
        else:
            body = b"{}"
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def _web_server(*, healthy: bool) -> Iterator[int]:
    """Serve /healthz on a free loopback port (200 when healthy, else 404); yield the port."""
    handler = type("Handler", (_HealthzHandler,), {"healthy": healthy})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _dashboard_panels() -> Iterator[dict[str, Any]]:
    dashboard = json.loads(_DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exported_metrics() -> dict[str, frozenset[str]]:
    """Map every sample name a worker exports to its label names.

    Built from the worker's own metric definitions and Faust's sensor, so the
    dashboard is checked against the code, not against a copied list.
    """
    registry = CollectorRegistry()
    tagger = TaggerMetrics.create(registry)
    collectors = [getattr(tagger, spec.name) for spec in dataclasses.fields(tagger)]
    collectors += list(FaustMetrics.create(registry, _FAUST_PREFIX))

    exported = dict(_PROMETHEUS_SERIES)
    for collector in collectors:
        # prometheus_client has no public accessor for a metric's label names.
        labels = frozenset(collector._labelnames)
        for family in collector.describe():
            for suffix in _SAMPLE_SUFFIXES[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                exported[family.name + suffix] = labels | extra
    return exported


def _promql_metric_names(expression: str) -> set[str]:
    """Return the metric names a PromQL expression selects.

    Those are the identifiers left once strings, label matchers, ranges,
    groupings, function calls and keywords are removed.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    identifiers = re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", text)
    return {name for name in identifiers if name not in _PROMQL_KEYWORDS}


def _promql_label_names(expression: str) -> set[str]:
    """Return the label names a PromQL expression groups by or matches on."""
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expression):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expression):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return labels
