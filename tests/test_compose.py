"""docker-compose.yml, Dockerfile and .env.sample agree with each other and with the package.

No Docker engine is needed: the file is parsed, every ``${VAR:-default}`` resolved,
and every service's command checked against the real entry point it names (the
``suprsend-celery`` click group, ``celery -A suprsend_celery.app <verb>``, the
Django example's ``manage.py``), with ``--help`` so that unknown verbs and options fail.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner

from suprsend_celery.ops.cli import cli

ROOT = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
#: The services running this package's image (the others run third-party images).
OURS = [name for name, service in SERVICES.items() if "build" in service]
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}")


def resolve(value: object) -> str:
    """A compose string with every ``${VAR:-default}`` replaced by its default."""
    return _VARIABLE.sub(lambda m: m.group(3) or "", str(value))


def strings(node: object) -> list[str]:
    """Every string anywhere in a parsed YAML node (keys too)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def references() -> dict[str, set[str | None]]:
    """Variable name → the defaults it is given across docker-compose.yml."""
    found: dict[str, set[str | None]] = {}
    for text in strings(COMPOSE):
        for match in _VARIABLE.finditer(text):
            default = match.group(3) if match.group(2) else None
            found.setdefault(match.group(1), set()).add(default)
    return found


def env_sample() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.sample").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def command(service: str) -> list[str]:
    raw = SERVICES[service]["command"]
    parts = shlex.split(raw) if isinstance(raw, str) else [str(p) for p in raw]
    return [resolve(p) for p in parts]


def container_ports(service: str) -> dict[int, str]:
    """Container port → the host side of the mapping (``ip:port`` or ``port``)."""
    out = {}
    for mapping in SERVICES[service].get("ports", []):
        host, _, container = resolve(mapping).rpartition(":")
        out[int(container)] = host
    return out


def image_path(path: str) -> Path:
    """Where a path inside the image comes from in this repository (WORKDIR /app)."""
    assert path.startswith("/app"), path
    return ROOT / path.removeprefix("/app").lstrip("/")


class TestServices:
    def test_every_service_is_there(self) -> None:
        """redis, sandbox, worker, beat, flower and the Django example (web + producer)."""
        assert set(SERVICES) >= {"redis", "sandbox", "worker", "beat", "flower", "django"}
        assert "producer" in SERVICES  # the example producing events on its own
        assert {"metrics", "prometheus", "grafana"} <= set(SERVICES)  # monitoring

    def test_redis_is_durable(self) -> None:
        """redis:7-alpine with AOF on, fsync always by default, data on a volume."""
        redis = SERVICES["redis"]
        assert resolve(redis["image"]) == "redis:7-alpine"
        args = command("redis")
        assert args[0] == "redis-server"
        assert args[args.index("--appendonly") + 1] == "yes"
        assert args[args.index("--appendfsync") + 1] == "always"
        assert any(v.endswith(":/data") for v in redis["volumes"])
        assert "redis-cli" in redis["healthcheck"]["test"]

    def test_published_ports(self) -> None:
        """Flower on 5555, the sandbox on 8787, Django on 8000; Redis only on loopback."""
        assert container_ports("flower") == {5555: "5555"}
        assert container_ports("sandbox") == {8787: "8787"}
        assert container_ports("django") == {8000: "8000"}
        assert container_ports("redis") == {6379: "127.0.0.1:6379"}
        assert container_ports("metrics") == {9808: "9808"}
        assert container_ports("prometheus") == {9090: "9090"}
        assert container_ports("grafana") == {3000: "3000"}
        assert "--port=5555" in command("flower")
        assert command("sandbox")[-2:] == ["--port", "8787"]
        assert "0.0.0.0:8000" in " ".join(command("django"))

    def test_images_are_named_with_tags(self) -> None:
        """Every service runs a named, tagged image; built ones come from this Dockerfile."""
        for name, service in SERVICES.items():
            image = resolve(service["image"])
            repository, sep, tag = image.rpartition(":")
            assert sep and re.fullmatch(r"[a-z0-9][a-z0-9._/-]*", repository), (name, image)
            assert tag and tag != "latest", (name, image)
            if "build" in service:
                assert service["build"] == "."
                assert repository == "suprsend-celery"
        assert (ROOT / "Dockerfile").is_file()

    def test_dependencies_name_services(self) -> None:
        """depends_on only names services of this file."""
        for name, service in SERVICES.items():
            for dependency in service.get("depends_on", {}):
                assert dependency in SERVICES, (name, dependency)
        assert SERVICES["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"

    def test_urls_point_at_services(self) -> None:
        """The default SuprSend URL is the sandbox service, the Redis URLs the redis one."""
        env = {k: resolve(v) for k, v in SERVICES["worker"]["environment"].items()}
        base = urlsplit(env["SUPRSEND_BASE_URL"])
        assert (base.hostname, base.port) == ("sandbox", 8787)
        for key in ("CELERY_BROKER_URL", "SUPRSEND_REDIS_URL"):
            url = urlsplit(env[key])
            assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)

    def test_producers_and_relay_share_queue_and_buffer(self) -> None:
        """django and producer publish where worker and beat consume and flush."""
        envs = {name: s["environment"] for name, s in SERVICES.items() if "build" in s}
        assert {"django", "producer", "worker", "beat", "metrics"} <= set(envs)
        for key in ("CELERY_BROKER_URL", "CELERY_TASK_DEFAULT_QUEUE", "SUPRSEND_KEY_PREFIX"):
            assert len({resolve(env[key]) for env in envs.values()}) == 1, key


class TestEnvironment:
    def test_every_variable_has_a_default(self) -> None:
        """``${VAR:-default}`` everywhere, so ``docker compose up`` works without a .env."""
        for name, defaults in references().items():
            assert None not in defaults, f"${{{name}}} has no default"

    def test_env_sample_lists_every_variable_with_its_default(self) -> None:
        """.env.sample names each variable once, with the default compose uses."""
        sample = env_sample()
        used = references()
        assert set(sample) == set(used)
        for name, defaults in used.items():
            assert defaults == {sample[name]}, (name, defaults, sample[name])


class TestDockerfile:
    def test_builds_the_package_on_python_slim(self) -> None:
        """python:3.11-slim; every COPY source exists; the package is pip-installed."""
        lines = (ROOT / "Dockerfile").read_text().splitlines()
        instructions = [line.split(None, 1) for line in lines if line and not line[0].isspace()]
        instructions = [i for i in instructions if i[0].isupper()]
        assert instructions[0] == ["FROM", "python:3.11-slim"]
        workdir = next(arg for op, arg in instructions if op == "WORKDIR")
        assert workdir == "/app"
        for op, arg in instructions:
            if op == "COPY":
                *sources, _ = arg.split()
                for source in sources:
                    assert (ROOT / source).exists(), source
        installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
        assert installs and 'pip install ".[prometheus]"' in installs[0]
        for extra in ("flower", "django"):
            assert extra in installs[0]

    def test_working_dirs_are_in_the_image(self) -> None:
        """A service's working_dir is a directory the Dockerfile copies in."""
        dockerfile = (ROOT / "Dockerfile").read_text()
        for name, service in SERVICES.items():
            if "working_dir" in service:
                local = image_path(service["working_dir"])
                assert local.is_dir(), (name, local)
                top = local.relative_to(ROOT).parts[0]
                assert f"COPY {top} " in dockerfile, (name, top)


def run_python(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` (plus ``--help`` unless it is ``-c CODE``) in a clean environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    environ.update(env)
    return subprocess.run(
        [sys.executable, *args, *([] if args[0] == "-c" else ["--help"])],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def django_steps(service: str) -> list[list[str]]:
    """The ``python manage.py ...`` steps of an ``sh -c "a && exec b"`` command."""
    args = command(service)
    assert args[:2] == ["sh", "-c"], args
    steps = []
    for part in args[2].split("&&"):
        words = shlex.split(part)
        if words[0] == "exec":
            words = words[1:]
        assert words[:2] == ["python", "manage.py"], words
        steps.append(words[2:])
    return steps


class TestCommands:
    def test_suprsend_celery_commands_exist(self) -> None:
        """``suprsend-celery`` is this package's console script and accepts each command."""
        scripts = {
            ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
        }
        assert scripts["suprsend-celery"] == "suprsend_celery.ops.cli:main"
        found = [name for name in OURS if command(name)[0] == "suprsend-celery"]
        assert found == ["sandbox", "metrics"]
        commands = [(name, command(name)[1:]) for name in found]
        for name, service in SERVICES.items():  # health checks that run our CLI
            test = service.get("healthcheck", {}).get("test", [])
            if test[:2] == ["CMD", "suprsend-celery"]:
                commands.append((f"{name} healthcheck", test[2:]))
        assert ("beat healthcheck", ["check"]) in commands
        for name, args in commands:
            assert args[0] in cli.commands
            result = CliRunner().invoke(cli, [*args, "--help"])
            assert result.exit_code == 0, (name, result.output)

    @pytest.mark.slow
    def test_celery_commands_resolve(self) -> None:
        """``celery -A suprsend_celery.app worker|beat|flower`` with their options."""
        celery_services = [name for name in OURS if command(name)[0] == "celery"]
        assert sorted(celery_services) == ["beat", "flower", "flusher", "worker"]
        plugins = {ep.name for ep in importlib.metadata.entry_points(group="celery.commands")}
        assert "flower" in plugins
        assert importlib.util.find_spec("flower") is not None
        from celery.bin.celery import celery as celery_group

        jobs = []
        for name in celery_services:
            args = command(name)
            assert args[1] == "-A"
            verb = args[3]
            assert verb in celery_group.commands or verb in plugins, (name, verb)
            jobs.append((name, ["-m", *args]))
            # The app module is imported in a subprocess: importing it here would make
            # its app the current one for the rest of the test session.
            probe = f"import {args[2]} as m, celery; assert isinstance(m.app, celery.Celery)"
            jobs.append((f"{name} app", ["-c", probe]))
        with ThreadPoolExecutor(3) as pool:
            results = pool.map(lambda job: (job[0], run_python(job[1], ROOT)), jobs)
            for name, done in results:
                assert done.returncode == 0, (name, done.stdout + done.stderr)

    @pytest.mark.slow
    def test_django_commands_resolve(self, tmp_path: Path) -> None:
        """The example's ``manage.py`` steps name real Django commands with valid options."""
        jobs = []
        for name in ("django", "producer"):
            workdir = image_path(SERVICES[name]["working_dir"])
            assert (workdir / "manage.py").is_file()
            settings = SERVICES[name]["environment"]["DJANGO_SETTINGS_MODULE"]
            assert (workdir / Path(*settings.split("."))).with_suffix(".py").is_file()
            for step in django_steps(name):
                jobs.append((name, workdir, settings, ["manage.py", *step]))
        assert ["manage.py", "produce_events", "--every", "2"] in [job[3] for job in jobs]

        def check(job: tuple[str, Path, str, list[str]]) -> tuple[str, Any]:
            name, workdir, settings, args = job
            done = run_python(
                args,
                workdir,
                DJANGO_SETTINGS_MODULE=settings,
                DJANGO_DB_PATH=str(tmp_path / f"{name}.sqlite3"),
            )
            return " ".join(args), done

        with ThreadPoolExecutor(2) as pool:
            for label, done in pool.map(check, jobs):
                assert done.returncode == 0, (label, done.stdout + done.stderr)
                assert "usage: manage.py" in done.stdout, label


class TestReadme:
    """The README's commands are the ones CI and a newcomer run; the documentation's
    pages (``docs/``, the site's sources) name every setting and every verb."""

    README = (ROOT / "README.md").read_text()
    #: The pages that hold the settings table and the command line (moved from the README).
    CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
    COMMAND_LINE = (ROOT / "docs" / "cli.md").read_text()
    DEMO = (
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[demo]" '
        "&& suprsend-celery demo"
    )

    def first_code_block(self) -> list[str]:
        start = self.README.index("```")
        body = self.README[start:].split("\n", 1)[1]
        return body[: body.index("```")].splitlines()

    def test_setup_commands_come_first(self) -> None:
        """The demo and test commands, verbatim, in the first code block."""
        lines = self.first_code_block()
        ci = (ROOT / ".ci" / "run").read_text().rstrip("\n").splitlines()[-1]
        assert self.DEMO in lines
        assert ci in lines
        assert lines.index(self.DEMO) < lines.index(ci)

    def test_configuration_table_lists_every_key(self) -> None:
        """Each ``suprsend_*`` setting appears in the table (``docs/configuration.md``) with
        its environment variable."""
        from suprsend_celery.pipeline.settings import Settings

        for field in Settings.__dataclass_fields__:
            if field in ("visibility_timeout", "sentinel_kwargs"):
                continue  # read from broker_transport_options, documented below the table
            assert f"| `suprsend_{field}` |" in self.CONFIGURATION or f"`suprsend_{field}`," in (
                self.CONFIGURATION
            ), field
            assert f"`SUPRSEND_{field.upper()}`" in self.CONFIGURATION, field

    def test_cli_verbs_are_documented(self) -> None:
        """Every command of the click group is shown on the command line's page."""
        for verb in cli.commands:
            assert f"suprsend-celery {verb}" in self.COMMAND_LINE, verb


# -- monitoring: the exporter, Prometheus, Grafana -------------------------------------

PROMQL_KEYWORDS = {"and", "or", "unless", "bool"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, ranges dropped)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors, e.g. [$__rate_interval]
    text = re.sub(r"\boffset\s+\w+", "", text)  # offset 5m
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def mounts(service: str) -> dict[str, Path]:
    """Container path → the repository path bind-mounted there."""
    out = {}
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = ROOT / source
    return out


DASHBOARD_DIR = "/var/lib/grafana/dashboards"
PROVISIONING = "/etc/grafana/provisioning"


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query of every dashboard provisioned."""
    out = []
    for path in sorted(mounts("grafana")[DASHBOARD_DIR].glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            out.extend((panel["title"], target["expr"]) for target in panel["targets"])
    return out


class TestMonitoring:
    def test_promql_names_are_read_as_prometheus_would(self) -> None:
        """The checker finds metrics and skips functions, labels and ranges."""
        expr = (
            'histogram_quantile(0.95, sum by (le, path) (rate(a_bucket{path="x"}[5m]))) '
            "/ ignoring(path) b + time() - c offset 5m"
        )
        assert metric_names(expr) == {"a_bucket", "b", "c"}

    def test_prometheus_scrapes_the_exporter(self) -> None:
        """prometheus.yml (mounted where --config.file says) targets the metrics service."""
        config_flag = next(a for a in command("prometheus") if a.startswith("--config.file="))
        config_path = mounts("prometheus")[config_flag.split("=", 1)[1]]
        config = yaml.safe_load(config_path.read_text())
        (job,) = config["scrape_configs"]
        assert job["metrics_path"] == "/metrics"
        (target,) = job["static_configs"][0]["targets"]
        host, port = target.split(":")
        assert host == "metrics" and int(port) in container_ports("metrics")
        assert command("metrics") == [
            "suprsend-celery", "metrics", "--host", "0.0.0.0", "--port", port
        ]  # fmt: skip

    def test_grafana_is_provisioned(self) -> None:
        """Its datasource is the prometheus service; its dashboards are the mounted ones."""
        provisioning = mounts("grafana")[PROVISIONING]
        (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
            "datasources"
        ]
        url = urlsplit(source["url"])
        assert source["type"] == "prometheus"
        assert url.hostname == "prometheus" and url.port in container_ports("prometheus")
        (provider,) = yaml.safe_load(next((provisioning / "dashboards").glob("*.yml")).read_text())[
            "providers"
        ]
        assert provider["options"]["path"] == DASHBOARD_DIR
        home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        assert (mounts("grafana")[DASHBOARD_DIR] / Path(home).name).is_file()
        for path in mounts("grafana")[DASHBOARD_DIR].glob("*.json"):
            dashboard = json.loads(path.read_text())
            for panel in dashboard["panels"]:
                for target in (panel, *panel["targets"]):
                    assert target["datasource"]["uid"] == source["uid"], panel["title"]

    def test_dashboard_queries_only_served_metrics(self, redis_url: str, tmp_path: Path) -> None:
        """Every PromQL query names only metrics that a real exporter's scrape contains."""
        from _metrics_helpers import scrape, start_exporter

        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPRSEND_", "CELERY_"))}
        env.update(
            SUPRSEND_WORKSPACE_KEY="WSKEY_compose_0123456789",
            SUPRSEND_WORKSPACE_SECRET="WSSECRET_compose",
            CELERY_BROKER_URL=redis_url,
        )
        exporter, url = start_exporter(env, tmp_path / "exporter.log")
        try:
            served = {name for name, _ in scrape(url)}
        finally:
            exporter.terminate()
            exporter.wait(timeout=10)
        exprs = dashboard_exprs()
        assert len(exprs) >= 12
        used = set()
        for title, expr in exprs:
            names = metric_names(expr)
            assert names, (title, expr)
            assert names <= served, (title, names - served)
            used |= names
        # ... and every metric served is on the dashboard.
        for name in served:
            family = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert any(u.startswith(family) for u in used), f"{name} is on no panel"
