"""docker-compose.yml and Dockerfile: valid Compose, and consistent with the app.

No Docker engine is needed. The compose file is validated against the official
Compose Specification schema vendored in tests/compose/ (see its README), after
Compose-style `${VAR:-default}` interpolation with an empty environment (what a
plain `docker compose up` without a .env file sees). Each consistency check is a
function returning a list of problems; every check is also run on a deliberately
broken copy to show that it can fail.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from app.config import ENV_VARS, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA_FILE = Path(__file__).resolve().parent / "compose" / "compose-spec.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"

APP_SERVICES = ("api", "worker")
DB_SERVICE = "postgres"
QDRANT_SERVICE = "qdrant"
QDRANT_DEFAULT_HTTP_PORT = 6333
POSTGRES_DEFAULT_PORT = 5432


# --------------------------------------------------------------------------- helpers

_INTERP = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR:+r}."""

    def repl(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        is_set = name in env
        is_nonempty = bool(env.get(name))
        if op in (":-", "-"):
            use_default = not is_nonempty if op == ":-" else not is_set
            return arg if use_default else env[name]
        if op in (":?", "?"):
            missing = not is_nonempty if op == ":?" else not is_set
            if missing:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return env[name]
        if op in (":+", "+"):
            present = is_nonempty if op == ":+" else is_set
            return arg if present else ""
        return env.get(name, "")

    return _INTERP.sub(repl, value)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    return node


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate_tree(raw, env or {})


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` as a dict (map or KEY=VAL list form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}
    return {k: "" if v is None else str(v) for k, v in env.items()}


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(args: str) -> list[str]:
    """JSON exec form (["a", "b"]) or shell form, as an argv list."""
    args = args.strip()
    if args.startswith("["):
        return json.loads(args)
    return shlex.split(args)


def dockerfile_facts() -> dict[str, Any]:
    ins = dockerfile_instructions()
    expose = [int(p.split("/")[0]) for k, a in ins if k == "EXPOSE" for p in a.split()]
    cmd = [exec_form(a) for k, a in ins if k == "CMD"]
    health = [a for k, a in ins if k == "HEALTHCHECK"]
    return {"instructions": ins, "expose": expose, "cmd": cmd[-1] if cmd else [], "health": health}


def cli_option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def container_ports(service: dict[str, Any]) -> list[int]:
    ports: list[int] = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            ports.append(int(p["target"]))
        else:
            ports.append(int(str(p).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def published_range(spec: Any) -> range:
    text = str(spec)
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def healthcheck_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return " ".join(test) if isinstance(test, list) else str(test or "")


# --------------------------------------------------------------------------- checks


def schema_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    # The schema declares draft-07 ("$schema": ".../draft-07/schema", which
    # jsonschema's lookup does not recognise without the trailing "#").
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def check_structure(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if "version" in doc:
        problems.append("top-level `version:` is obsolete in the Compose Specification")
    services = doc.get("services", {})
    for name in (*APP_SERVICES, DB_SERVICE, QDRANT_SERVICE):
        if name not in services:
            problems.append(f"service {name!r} missing")
    if problems:
        return problems

    api, worker = services["api"], services["worker"]
    if (api.get("deploy") or {}).get("replicas") != 2:
        problems.append("api must run 2 replicas (deploy.replicas: 2)")
    if not api.get("build"):
        problems.append("api must be built from this repository")
    if worker.get("image") != api.get("image") or worker.get("build") != api.get("build"):
        problems.append("worker must use the api's image/build")
    if worker.get("command") not in (["opengrove", "worker"], "opengrove worker"):
        problems.append(f"worker command must be `opengrove worker`, got {worker.get('command')!r}")
    if not str(services[DB_SERVICE].get("image", "")).startswith("postgres:16"):
        problems.append("postgres must be postgres:16")
    if not str(services[QDRANT_SERVICE].get("image", "")).startswith("qdrant/qdrant"):
        problems.append("qdrant must use the qdrant/qdrant image")

    for name in APP_SERVICES:
        deps = services[name].get("depends_on") or {}
        for dep in (DB_SERVICE, QDRANT_SERVICE):
            cond = deps.get(dep, {}).get("condition") if isinstance(deps, dict) else None
            if cond != "service_healthy":
                problems.append(f"{name} must depend on {dep} with condition service_healthy")
    for svc in services.values():
        deps = svc.get("depends_on")
        for dep_name, dep in deps.items() if isinstance(deps, dict) else []:
            if dep_name not in services:
                problems.append(f"depends_on names unknown service {dep_name!r}")
            elif dep.get("condition") == "service_healthy":
                hc = services[dep_name].get("healthcheck") or {}
                if hc.get("disable") or not hc.get("test"):
                    problems.append(f"{dep_name} is waited on as healthy but has no healthcheck")

    pg_test = healthcheck_text(services[DB_SERVICE])
    if "pg_isready" not in pg_test:
        problems.append("postgres healthcheck must use pg_isready")

    declared = set(doc.get("volumes") or {})
    for sname, svc in services.items():
        for vol in svc.get("volumes") or []:
            source = vol.get("source") if isinstance(vol, dict) else str(vol).split(":", 1)[0]
            if source and not source.startswith((".", "/", "~")) and source not in declared:
                problems.append(f"{sname} mounts undeclared volume {source!r}")
    for sname in (*APP_SERVICES, DB_SERVICE, QDRANT_SERVICE):
        if not any(not str(v).startswith((".", "/")) for v in services[sname].get("volumes", [])):
            problems.append(f"{sname} must keep its data in a named volume")
    return problems


def check_app_env(doc: dict[str, Any]) -> list[str]:
    """Every env key is a real setting; URLs point at the compose services."""
    problems: list[str] = []
    services = doc["services"]
    pg = services[DB_SERVICE]
    pg_env = environment_of(pg)
    qd_env = environment_of(services[QDRANT_SERVICE])
    qdrant_port = int(qd_env.get("QDRANT__SERVICE__HTTP_PORT") or QDRANT_DEFAULT_HTTP_PORT)

    for name in APP_SERVICES:
        env = environment_of(services[name])
        unknown = sorted(set(env) - set(ENV_VARS))
        if unknown:
            problems.append(f"{name}: environment keys not in app.config.ENV_VARS: {unknown}")
        for required in ("DATABASE_URL", "QDRANT_URL", "OPENGROVE_DATA_DIR", "OPENGROVE_PORT"):
            if required not in env:
                problems.append(f"{name}: {required} not set")
        if "DATABASE_URL" in env:
            db = urlsplit(env["DATABASE_URL"])
            if not db.scheme.startswith(("postgresql", "postgres")):
                problems.append(f"{name}: DATABASE_URL is not PostgreSQL: {db.scheme}")
            if db.hostname != DB_SERVICE:
                problems.append(f"{name}: DATABASE_URL host {db.hostname!r} != {DB_SERVICE!r}")
            if (db.port or POSTGRES_DEFAULT_PORT) != int(pg_env.get("PGPORT") or 5432):
                problems.append(f"{name}: DATABASE_URL port {db.port} != postgres port")
            if db.username != pg_env.get("POSTGRES_USER", "postgres"):
                problems.append(f"{name}: DATABASE_URL user {db.username!r} != POSTGRES_USER")
            if db.password != pg_env.get("POSTGRES_PASSWORD"):
                problems.append(f"{name}: DATABASE_URL password != POSTGRES_PASSWORD")
            dbname = db.path.lstrip("/")
            if dbname != pg_env.get("POSTGRES_DB", pg_env.get("POSTGRES_USER", "postgres")):
                problems.append(f"{name}: DATABASE_URL database {dbname!r} != POSTGRES_DB")
            if f"-U {db.username}" not in healthcheck_text(pg):
                problems.append("postgres healthcheck does not check the app's user")
        if "QDRANT_URL" in env:
            qd = urlsplit(env["QDRANT_URL"])
            if (qd.hostname, qd.port) != (QDRANT_SERVICE, qdrant_port):
                problems.append(
                    f"{name}: QDRANT_URL {qd.hostname}:{qd.port} != {QDRANT_SERVICE}:{qdrant_port}"
                )
    if str(qdrant_port) not in healthcheck_text(services[QDRANT_SERVICE]):
        problems.append(f"qdrant healthcheck does not probe port {qdrant_port}")
    return problems


def check_ports_and_image(doc: dict[str, Any]) -> list[str]:
    """api container port == OPENGROVE_PORT == Dockerfile EXPOSE/CMD/HEALTHCHECK."""
    problems: list[str] = []
    facts = dockerfile_facts()
    api = doc["services"]["api"]
    env = environment_of(api)
    port = int(env.get("OPENGROVE_PORT", "0"))

    targets = container_ports(api)
    if targets != [port]:
        problems.append(f"api container ports {targets} != [OPENGROVE_PORT={port}]")
    replicas = (api.get("deploy") or {}).get("replicas", 1)
    for p in api.get("ports") or []:
        if isinstance(p, dict) and "published" in p:
            if len(published_range(p["published"])) < replicas:
                problems.append("api published port range is smaller than its replica count")
        elif not isinstance(p, dict) and str(p).count(":") >= 1:
            if len(published_range(str(p).rsplit(":", 1)[0].split(":")[-1])) < replicas:
                problems.append("api published port range is smaller than its replica count")
    if facts["expose"] != [port]:
        problems.append(f"Dockerfile EXPOSE {facts['expose']} != [{port}]")

    cmd = api.get("command") or facts["cmd"]
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    if cmd[:2] != ["opengrove", "serve"]:
        problems.append(f"api runs {cmd!r}, not `opengrove serve`")
    if cli_option(cmd, "--port") not in (None, str(port)):
        problems.append(f"api serves on --port {cli_option(cmd, '--port')} != {port}")
    if cli_option(cmd, "--data-dir") not in (None, env.get("OPENGROVE_DATA_DIR")):
        problems.append("api --data-dir != OPENGROVE_DATA_DIR")

    if "healthcheck" in api:
        hc_text = healthcheck_text(api)
    elif facts["health"]:
        hc_text = facts["health"][-1]
    else:
        hc_text = ""
    m = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[^\s'\"]*)", hc_text)
    if not m:
        problems.append("api healthcheck does not request http://127.0.0.1:<port>/health")
    else:
        if int(m.group(1)) != port:
            problems.append(f"healthcheck port {m.group(1)} != {port}")
        if m.group(2) != "/health":
            problems.append(f"healthcheck path {m.group(2)} != /health")
    if "curl" in hc_text or "wget" in hc_text:
        problems.append("healthcheck uses curl/wget, which python:3.11-slim does not have")

    data_dir = env.get("OPENGROVE_DATA_DIR")
    mounts = [str(v).split(":")[1] for v in api.get("volumes") or [] if ":" in str(v)]
    if data_dir not in mounts:
        problems.append(f"OPENGROVE_DATA_DIR={data_dir} is not a mounted volume in api")
    volumes = [a for k, a in facts["instructions"] if k == "VOLUME"]
    if not any(data_dir in exec_form(v) for v in volumes):
        problems.append(f"Dockerfile does not declare VOLUME {data_dir}")
    return problems


def check_dockerfile(text_instructions: list[tuple[str, str]]) -> list[str]:
    problems: list[str] = []
    froms = [a for k, a in text_instructions if k == "FROM"]
    args = {
        a.split("=", 1)[0]: a.split("=", 1)[1]
        for k, a in text_instructions
        if k == "ARG" and "=" in a
    }
    if len(froms) < 2:
        problems.append("Dockerfile must be multi-stage")
    for f in froms:
        image = f.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if image != "python:3.11-slim":
            problems.append(f"stage base {image!r} is not python:3.11-slim")

    runs = [a for k, a in text_instructions if k == "RUN"]
    uv_pins = [re.search(r"pip install[^\n]*[\"']?uv==([\w.${}]+)", r) for r in runs]
    pins = [m.group(1) for m in uv_pins if m]
    if not pins:
        problems.append("uv must be installed with `pip install uv==<version>`")
    elif not re.fullmatch(
        r"\d+\.\d+\.\d+", re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), pins[0])
    ):
        problems.append(f"uv is not pinned to an exact version: {pins[0]}")

    syncs = [(i, a) for i, (k, a) in enumerate(text_instructions) if k == "RUN" and "uv sync" in a]
    if not syncs:
        problems.append("no `uv sync` in the Dockerfile")
    for _, run in syncs:
        sync_args = run.split("uv sync", 1)[1].split("&&")[0].split()
        if "--frozen" not in sync_args:
            problems.append(f"`uv sync` without --frozen: {run}")
        if "--no-dev" not in sync_args:
            problems.append(f"`uv sync` without --no-dev: {run}")
        if {"--upgrade", "-U", "--no-install-workspace"} & set(sync_args):
            problems.append(f"`uv sync` must install exactly the lockfile: {run}")
    if syncs:
        first_sync = syncs[0][0]
        lock_copied = any(
            k == "COPY" and "uv.lock" in a.split() for k, a in text_instructions[:first_sync]
        )
        if not lock_copied:
            problems.append("uv.lock is not copied in before the first `uv sync`")

    users = [a for k, a in text_instructions if k == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final image must run as a non-root USER")
    cmd = [exec_form(a) for k, a in text_instructions if k == "CMD"]
    expected = ["opengrove", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
    if not cmd or cmd[-1] != expected:
        problems.append(f"CMD must be {expected}")
    health = [a for k, a in text_instructions if k == "HEALTHCHECK"]
    if not health or "python" not in health[-1] or "/health" not in health[-1]:
        problems.append("HEALTHCHECK must request /health with python")
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings must see only what compose passes, not this machine's environment."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def mutated(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of `doc` with the dotted `path` set to `value` (None deletes it)."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return out


# --------------------------------------------------------------------------- tests: schema


def test_vendored_schema_is_the_recorded_file() -> None:
    digest = hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    assert digest == SCHEMA_SHA256, "tests/compose/compose-spec.json changed; see its README"
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "include", "models"} <= set(schema["properties"])


def test_compose_file_validates_against_compose_spec(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_compose_file_validates_with_variables_set() -> None:
    env = {"POSTGRES_PASSWORD": "s3", "OPENGROVE_MODELS": "llama3", "OPENGROVE_DB_POOL_SIZE": "5"}
    assert schema_errors(load_compose(env)) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("services.api.deploy.replicas", [2]),
        ("services.api.deploy.not_a_deploy_key", 2),
        ("services.api.depends_on.postgres.condition", "service_ready"),
        ("services.postgres.healthcheck.interval", 5),
        ("services.api.ports", "8000:8000"),
        ("services.worker.not_a_compose_key", True),
        ("volumes.bad name", {}),
    ],
)
def test_schema_rejects_invalid_compose(compose: dict[str, Any], path: str, value: Any) -> None:
    assert schema_errors(mutated(compose, path, value)) != []


def test_interpolation_follows_compose_rules() -> None:
    assert interpolate("a${X:-d}b", {}) == "adb"
    assert interpolate("a${X:-d}b", {"X": ""}) == "adb"
    assert interpolate("a${X-d}b", {"X": ""}) == "ab"
    assert interpolate("${X:-d}", {"X": "v"}) == "v"
    assert interpolate("$$x $X", {"X": "1"}) == "$x 1"
    with pytest.raises(ValueError):
        interpolate("${X:?need X}", {})


# --------------------------------------------------------------------------- tests: app agreement


def test_compose_structure(compose: dict[str, Any]) -> None:
    assert check_structure(compose) == []


def test_compose_env_agrees_with_app_settings(compose: dict[str, Any]) -> None:
    assert check_app_env(compose) == []


def test_compose_env_agrees_when_password_is_overridden() -> None:
    assert check_app_env(load_compose({"POSTGRES_PASSWORD": "another"})) == []


def test_ports_agree_with_dockerfile(compose: dict[str, Any]) -> None:
    assert check_ports_and_image(compose) == []


@pytest.mark.parametrize("service", APP_SERVICES)
def test_settings_parse_compose_env(compose: dict[str, Any], clean_env: None, service: str) -> None:
    env = environment_of(compose["services"][service])
    settings = Settings(**env)
    url = urlsplit(settings.resolved_database_url)
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == DB_SERVICE
    assert settings.qdrant_url == f"http://{QDRANT_SERVICE}:{QDRANT_DEFAULT_HTTP_PORT}"
    assert settings.data_dir == Path("/data")
    assert settings.port == 8000
    assert settings.run_migrations_on_start is False
    assert settings.models and all(settings.models)


def test_settings_rewrite_plain_postgresql_url(clean_env: None) -> None:
    # The compose file may use postgresql://; the app must still end on asyncpg.
    settings = Settings(DATABASE_URL="postgresql://opengrove:pw@postgres:5432/opengrove")
    assert settings.resolved_database_url.startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("services.api.environment.OPENGROVE_BOGUS", "1", "not in app.config.ENV_VARS"),
        (
            "services.worker.environment.DATABASE_URL",
            "postgresql+asyncpg://opengrove:opengrove@db:5432/opengrove",
            "host 'db'",
        ),
        (
            "services.api.environment.DATABASE_URL",
            "postgresql+asyncpg://opengrove:opengrove@postgres:5433/opengrove",
            "port",
        ),
        (
            "services.api.environment.DATABASE_URL",
            "postgresql+asyncpg://app:opengrove@postgres:5432/opengrove",
            "user",
        ),
        (
            "services.api.environment.DATABASE_URL",
            "postgresql+asyncpg://opengrove:opengrove@postgres:5432/other",
            "database",
        ),
        ("services.postgres.environment.POSTGRES_PASSWORD", "changed", "password"),
        ("services.worker.environment.QDRANT_URL", "http://qdrant:6334", "QDRANT_URL"),
        ("services.qdrant.environment.QDRANT__SERVICE__HTTP_PORT", "7000", "QDRANT_URL"),
        ("services.api.environment.QDRANT_URL", None, "QDRANT_URL not set"),
    ],
)
def test_env_check_catches_mismatch(
    compose: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    # environment is shared through a YAML anchor: unshare it so one service changes.
    for name in APP_SERVICES:
        compose["services"][name]["environment"] = dict(compose["services"][name]["environment"])
    problems = check_app_env(mutated(compose, path, value))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("services.api.environment.OPENGROVE_PORT", "9000", "container ports"),
        ("services.api.ports", [{"target": 9000, "published": "8000-8001"}], "container ports"),
        ("services.api.ports", [{"target": 8000, "published": "8000"}], "replica count"),
        ("services.api.command", ["opengrove", "serve", "--port", "9000"], "--port 9000"),
        (
            "services.api.healthcheck",
            {"test": ["CMD", "curl", "-f", "http://127.0.0.1:8000/health"]},
            "curl",
        ),
        (
            "services.api.healthcheck",
            {"test": ["CMD", "python", "http://127.0.0.1:8001/health"]},
            "healthcheck port",
        ),
        ("services.api.volumes", ["opengrove-data:/var/opengrove"], "not a mounted volume"),
    ],
)
def test_port_check_catches_mismatch(
    compose: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    compose["services"]["api"]["environment"] = dict(compose["services"]["api"]["environment"])
    problems = check_ports_and_image(mutated(compose, path, value))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("services.api.deploy.replicas", 1, "2 replicas"),
        ("services.worker.command", ["opengrove", "serve"], "opengrove worker"),
        ("services.worker.depends_on.qdrant.condition", "service_started", "qdrant"),
        ("services.qdrant.healthcheck", {"disable": True}, "no healthcheck"),
        ("services.postgres.healthcheck.test", ["CMD", "true"], "pg_isready"),
        ("services.postgres.volumes", ["pgdata:/var/lib/postgresql/data"], "undeclared"),
        ("version", "3.8", "version"),
    ],
)
def test_structure_check_catches_mistakes(
    compose: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    problems = check_structure(mutated(compose, path, value))
    assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------------- tests: Dockerfile


def test_dockerfile_builds_from_the_lockfile() -> None:
    assert check_dockerfile(dockerfile_instructions()) == []


def test_dockerfile_installs_with_frozen_lockfile() -> None:
    syncs = [a for k, a in dockerfile_instructions() if k == "RUN" and "uv sync" in a]
    assert syncs, "Dockerfile never runs uv sync"
    assert all("--frozen" in s.split() for s in syncs)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "uv sync --frozen --no-dev --no-install-project",
            "uv sync --no-dev --no-install-project",
            "without --frozen",
        ),
        ("uv sync --frozen --no-dev\n", "uv sync --frozen\n", "without --no-dev"),
        ("USER 10001:10001", "USER root", "non-root"),
        ("ARG PYTHON_IMAGE=python:3.11-slim", "ARG PYTHON_IMAGE=python:3.12", "python:3.11-slim"),
        ('"uv==${UV_VERSION}"', "uv", "pip install uv=="),
        ("COPY pyproject.toml uv.lock README.md ./", "COPY pyproject.toml README.md ./", "uv.lock"),
        ('"--port", "8000"', '"--port", "8080"', "CMD must be"),
    ],
)
def test_dockerfile_check_catches_mistakes(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"test fixture out of date: {old!r} not in Dockerfile"
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new))
    problems = check_dockerfile(dockerfile_instructions(broken))
    assert any(expected in p for p in problems), problems


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "data", ".git", ".pytest_cache", ".ruff_cache", ".env"} <= entries
    # The build needs these: the lockfile, the project metadata and its readme.
    for needed in ("uv.lock", "pyproject.toml", "README.md", "app", "migrations"):
        assert needed not in entries
