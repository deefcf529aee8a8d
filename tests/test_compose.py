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
import tomllib
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
PYPROJECT = ROOT / "pyproject.toml"
README = ROOT / "README.md"
SCHEMA_FILE = Path(__file__).resolve().parent / "compose" / "compose-spec.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"

# Two API services, one fixed host port each (a port range with deploy.replicas
# races in Compose v2: "port is already allocated").
API_SERVICES = ("api-1", "api-2")
API_ANCHOR = "opengrove-api"
APP_SERVICES = (*API_SERVICES, "worker")
BIND_ADDRESS_VAR = "OPENGROVE_BIND_ADDRESS"
DEFAULT_BIND_ADDRESS = "127.0.0.1"
UP_COMMAND = "docker compose up -d --build"
# `env_file: [{path, required: false}]` needs this Compose release or newer.
MIN_COMPOSE_VERSION = "2.24.0"
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


BOOTSTRAP_KEY_VAR = "OPENGROVE_BOOTSTRAP_KEY"
A_KEY = {BOOTSTRAP_KEY_VAR: "k" * 40}  # what a user's .env holds


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return interpolate_tree(raw, {**A_KEY, **(env or {})})


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


def port_entries(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's `ports` as long-syntax dicts (host_ip, published, target, protocol).

    Short syntax: [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL] (no IPv6 literals here).
    """
    out: list[dict[str, Any]] = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            out.append(dict(p))
            continue
        text, _, protocol = str(p).partition("/")
        parts = text.split(":")
        entry: dict[str, Any] = {"target": parts[-1], "protocol": protocol or "tcp"}
        if len(parts) >= 2:
            entry["published"] = parts[-2]
        if len(parts) >= 3:
            entry["host_ip"] = parts[-3]
        out.append(entry)
    return out


def container_ports(service: dict[str, Any]) -> list[int]:
    return [int(p["target"]) for p in port_entries(service)]


def fixed_port(spec: Any) -> int | None:
    """The published port if it is one fixed number (not a range, not random)."""
    text = str(spec).strip() if spec is not None else ""
    return int(text) if text.isdigit() else None


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

    api, worker = services[API_SERVICES[0]], services["worker"]
    if not api.get("build"):
        problems.append(f"{API_SERVICES[0]} must be built from this repository")
    for name in API_SERVICES[1:]:
        if {k: v for k, v in services[name].items() if k != "ports"} != {
            k: v for k, v in api.items() if k != "ports"
        }:
            problems.append(f"{name} differs from {API_SERVICES[0]} in more than its ports")
    for sname, svc in services.items():
        replicas = (svc.get("deploy") or {}).get("replicas", 1)
        if svc.get("ports") and replicas != 1:
            problems.append(
                f"{sname} publishes ports with deploy.replicas: {replicas} "
                "(races on host ports; use one service per port)"
            )
        if svc.get("ports") and sname not in API_SERVICES:
            problems.append(f"{sname} must not publish ports to the host")
    if worker.get("image") != api.get("image") or worker.get("build") != api.get("build"):
        problems.append("worker must use the API services' image/build")
    if environment_of(worker).get("OPENGROVE_RUN_WORKERS", "true").lower() in ("false", "0"):
        problems.append("worker must not set OPENGROVE_RUN_WORKERS=false")
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


def check_ports_and_image(
    doc: dict[str, Any], bind_address: str = DEFAULT_BIND_ADDRESS
) -> list[str]:
    """Each API service: one fixed published port (distinct across services) on
    `bind_address`, container port == OPENGROVE_PORT == Dockerfile EXPOSE/CMD/HEALTHCHECK."""
    problems: list[str] = []
    facts = dockerfile_facts()
    published: dict[int, str] = {}
    for name in API_SERVICES:
        problems += _check_api_service(doc, name, facts, bind_address, published)
    volumes = [a for k, a in facts["instructions"] if k == "VOLUME"]
    for name in API_SERVICES:
        data_dir = environment_of(doc["services"][name]).get("OPENGROVE_DATA_DIR")
        if not any(data_dir in exec_form(v) for v in volumes):
            problems.append(f"Dockerfile does not declare VOLUME {data_dir}")
    return problems


def _check_api_service(
    doc: dict[str, Any],
    name: str,
    facts: dict[str, Any],
    bind_address: str,
    published: dict[int, str],
) -> list[str]:
    problems: list[str] = []
    api = doc["services"][name]
    env = environment_of(api)
    port = int(env.get("OPENGROVE_PORT", "0"))

    if env.get("OPENGROVE_RUN_WORKERS", "true").lower() not in ("false", "0"):
        problems.append(f"{name}: OPENGROVE_RUN_WORKERS must be false (the worker runs them)")
    entries = port_entries(api)
    if len(entries) != 1:
        problems.append(f"{name} must publish exactly one port, has {len(entries)}")
    targets = container_ports(api)
    if any(t != port for t in targets):
        problems.append(f"{name} container ports {targets} != [OPENGROVE_PORT={port}]")
    for entry in entries:
        host_port = fixed_port(entry.get("published"))
        if host_port is None:
            problems.append(
                f"{name} published port {entry.get('published')!r} is not one fixed port"
            )
        elif host_port in published:
            problems.append(f"{name} and {published[host_port]} both publish port {host_port}")
        else:
            published[host_port] = name
        host_ip = entry.get("host_ip") or "0.0.0.0"
        if host_ip != bind_address:
            problems.append(f"{name} is bound to host_ip {host_ip!r}, expected {bind_address!r}")
    if facts["expose"] != [port]:
        problems.append(f"Dockerfile EXPOSE {facts['expose']} != [{port}]")

    cmd = api.get("command") or facts["cmd"]
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    if cmd[:2] != ["opengrove", "serve"]:
        problems.append(f"{name} runs {cmd!r}, not `opengrove serve`")
    if cli_option(cmd, "--port") not in (None, str(port)):
        problems.append(f"{name} serves on --port {cli_option(cmd, '--port')} != {port}")
    if cli_option(cmd, "--data-dir") not in (None, env.get("OPENGROVE_DATA_DIR")):
        problems.append(f"{name} --data-dir != OPENGROVE_DATA_DIR")

    if "healthcheck" in api:
        hc_text = healthcheck_text(api)
    elif facts["health"]:
        hc_text = facts["health"][-1]
    else:
        hc_text = ""
    m = re.search(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[^\s'\"]*)", hc_text)
    if not m:
        problems.append(f"{name} healthcheck does not request http://127.0.0.1:<port>/health")
    else:
        if int(m.group(1)) != port:
            problems.append(f"{name} healthcheck port {m.group(1)} != {port}")
        if m.group(2) != "/health":
            problems.append(f"{name} healthcheck path {m.group(2)} != /health")
    if "curl" in hc_text or "wget" in hc_text:
        problems.append(f"{name} healthcheck uses curl/wget, which python:3.11-slim does not have")

    data_dir = env.get("OPENGROVE_DATA_DIR")
    mounts = [str(v).split(":")[1] for v in api.get("volumes") or [] if ":" in str(v)]
    if data_dir not in mounts:
        problems.append(f"OPENGROVE_DATA_DIR={data_dir} is not a mounted volume in {name}")
    return problems


def check_build_system(pyproject: dict[str, Any]) -> list[str]:
    """[build-system] requires: every build requirement pinned to one exact version."""
    build = pyproject.get("build-system") or {}
    requires = build.get("requires")
    if not requires:
        return ["[build-system] requires is missing"]
    problems: list[str] = []
    for req in requires:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==\d+(\.\d+)*", req.replace(" ", "")):
            problems.append(f"build requirement {req!r} is not pinned exactly (name==X.Y.Z)")
    backend = str(build.get("build-backend", ""))
    names = {re.split(r"[=<>!~ \[]", r, maxsplit=1)[0].lower() for r in requires}
    if backend.split(".")[0] not in names:
        problems.append(f"build-backend {backend!r} is not among the pinned requirements")
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
    env = {
        "POSTGRES_PASSWORD": "s3",
        "OPENGROVE_MODELS": "llama3",
        "OPENGROVE_DB_POOL_SIZE": "5",
        BIND_ADDRESS_VAR: "0.0.0.0",
    }
    assert schema_errors(load_compose(env)) == []


def compose_header() -> str:
    """The leading comment block of docker-compose.yml, without the `#`s."""
    lines = []
    for line in COMPOSE_FILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    return "\n".join(lines)


def uses_optional_env_file(doc: dict[str, Any]) -> bool:
    """`env_file: [{path, required: false}]`: Docker Compose v2.24.0 or newer only."""
    return any(
        isinstance(entry, dict) and "required" in entry
        for svc in doc["services"].values()
        for entry in (svc.get("env_file") if isinstance(svc.get("env_file"), list) else [])
    )


def test_compose_header_states_command_and_minimum_version(compose: dict[str, Any]) -> None:
    header = compose_header()
    assert re.search(rf"^\s+{re.escape(UP_COMMAND)}\s*$", header, re.M), header
    assert uses_optional_env_file(compose)
    assert f"v{MIN_COMPOSE_VERSION} or newer" in header
    assert f"{BIND_ADDRESS_VAR}=0.0.0.0" in header


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("services.api-1.deploy", {"replicas": [2]}),
        ("services.api-1.deploy", {"not_a_deploy_key": 2}),
        ("services.api-1.depends_on.postgres.condition", "service_ready"),
        ("services.postgres.healthcheck.interval", 5),
        ("services.api-1.ports", "8000:8000"),
        ("services.api-2.ports.0.host_ip", ["127.0.0.1"]),
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


def test_ports_bind_to_loopback_by_default(compose: dict[str, Any]) -> None:
    for name in API_SERVICES:
        assert [p.get("host_ip") for p in port_entries(compose["services"][name])] == [
            DEFAULT_BIND_ADDRESS
        ]
    assert sorted(
        fixed_port(p["published"])
        for name in API_SERVICES
        for p in port_entries(compose["services"][name])
    ) == [8000, 8001]


def test_bind_address_variable_exposes_the_api() -> None:
    exposed = load_compose({BIND_ADDRESS_VAR: "0.0.0.0"})
    assert check_ports_and_image(exposed, bind_address="0.0.0.0") == []
    # ... and the default check notices it: the variable really reaches host_ip.
    problems = check_ports_and_image(exposed)
    assert sum("host_ip '0.0.0.0'" in p for p in problems) == len(API_SERVICES), problems


def test_api_services_share_one_anchor() -> None:
    """api-1 and api-2 merge the same YAML anchor, so they cannot drift apart."""
    root = yaml.compose(COMPOSE_FILE.read_text())
    assert isinstance(root, yaml.MappingNode)

    def child(node: yaml.Node, key: str) -> yaml.Node:
        assert isinstance(node, yaml.MappingNode)
        return next(v for k, v in node.value if k.value == key)

    services = child(root, "services")
    anchor = child(root, f"x-{API_ANCHOR}")
    for name in API_SERVICES:
        merged = child(child(services, name), "<<")
        assert merged is anchor, f"{name} does not merge x-{API_ANCHOR}"
        own_keys = {k.value for k, _ in child(services, name).value} - {"<<"}
        assert own_keys == {"ports"}, f"{name} overrides more than its ports: {own_keys}"


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
    # API services leave runs to the worker service.
    assert settings.run_workers is (service not in API_SERVICES)
    assert settings.models and all(settings.models)


def test_settings_rewrite_plain_postgresql_url(clean_env: None) -> None:
    # The compose file may use postgresql://; the app must still end on asyncpg.
    settings = Settings(DATABASE_URL="postgresql://opengrove:pw@postgres:5432/opengrove")
    assert settings.resolved_database_url.startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("services.api-1.environment.OPENGROVE_BOGUS", "1", "not in app.config.ENV_VARS"),
        (
            "services.worker.environment.DATABASE_URL",
            "postgresql+asyncpg://opengrove:opengrove@db:5432/opengrove",
            "host 'db'",
        ),
        (
            "services.api-1.environment.DATABASE_URL",
            "postgresql+asyncpg://opengrove:opengrove@postgres:5433/opengrove",
            "port",
        ),
        (
            "services.api-1.environment.DATABASE_URL",
            "postgresql+asyncpg://app:opengrove@postgres:5432/opengrove",
            "user",
        ),
        (
            "services.api-1.environment.DATABASE_URL",
            "postgresql+asyncpg://opengrove:opengrove@postgres:5432/other",
            "database",
        ),
        ("services.postgres.environment.POSTGRES_PASSWORD", "changed", "password"),
        ("services.worker.environment.QDRANT_URL", "http://qdrant:6334", "QDRANT_URL"),
        ("services.qdrant.environment.QDRANT__SERVICE__HTTP_PORT", "7000", "QDRANT_URL"),
        ("services.api-1.environment.QDRANT_URL", None, "QDRANT_URL not set"),
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


LOOPBACK = "${OPENGROVE_BIND_ADDRESS:-127.0.0.1}"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("services.api-1.environment.OPENGROVE_PORT", "9000", "container ports"),
        ("services.api-2.ports", [{"target": 9000, "published": "8001"}], "container ports"),
        ("services.api-1.environment.OPENGROVE_RUN_WORKERS", "true", "OPENGROVE_RUN_WORKERS"),
        ("services.api-2.environment.OPENGROVE_RUN_WORKERS", None, "OPENGROVE_RUN_WORKERS"),
        (
            "services.api-1.ports",
            [{"target": 8000, "published": "8000-8001", "host_ip": "127.0.0.1"}],
            "not one fixed port",
        ),
        ("services.api-2.ports", [{"target": 8000, "host_ip": "127.0.0.1"}], "not one fixed port"),
        ("services.api-2.ports.0.published", "8000", "both publish port 8000"),
        ("services.api-1.ports", [], "exactly one port"),
        ("services.api-1.ports", ["127.0.0.1:8000:8000", "127.0.0.1:8002:8000"], "exactly one"),
        ("services.api-1.ports.0.host_ip", None, "host_ip '0.0.0.0'"),
        ("services.api-2.ports", ["8001:8000"], "host_ip '0.0.0.0'"),
        ("services.api-2.ports", ["127.0.0.1:8001:8000"], None),
        ("services.api-1.command", ["opengrove", "serve", "--port", "9000"], "--port 9000"),
        (
            "services.api-1.healthcheck",
            {"test": ["CMD", "curl", "-f", "http://127.0.0.1:8000/health"]},
            "curl",
        ),
        (
            "services.api-2.healthcheck",
            {"test": ["CMD", "python", "http://127.0.0.1:8001/health"]},
            "healthcheck port",
        ),
        ("services.api-2.volumes", ["opengrove-data:/var/opengrove"], "not a mounted volume"),
    ],
)
def test_port_check_catches_mismatch(
    compose: dict[str, Any], path: str, value: Any, expected: str | None
) -> None:
    # environment is shared through YAML anchors: unshare it so one service changes.
    for name in API_SERVICES:
        compose["services"][name]["environment"] = dict(compose["services"][name]["environment"])
    problems = check_ports_and_image(mutated(compose, path, value))
    if expected is None:  # an equivalent spelling (short syntax) that must pass
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_port_entries_parse_short_and_long_syntax() -> None:
    svc = {
        "ports": [
            "8000",
            "8001:8000",
            "127.0.0.1:8002:8000/udp",
            {"target": 8000, "published": "8003", "host_ip": LOOPBACK},
        ]
    }
    assert port_entries(svc) == [
        {"target": "8000", "protocol": "tcp"},
        {"target": "8000", "published": "8001", "protocol": "tcp"},
        {"target": "8000", "published": "8002", "host_ip": "127.0.0.1", "protocol": "udp"},
        {"target": 8000, "published": "8003", "host_ip": LOOPBACK},
    ]
    assert [fixed_port(s) for s in ("8000", 8001, "8000-8001", None, "")] == [
        8000,
        8001,
        None,
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("services.api-2", None, "'api-2' missing"),
        ("services.api-1.deploy", {"replicas": 2}, "deploy.replicas: 2"),
        ("services.api-2.image", "opengrove:other", "api-2 differs from api-1"),
        ("services.api-2.restart", "no", "api-2 differs from api-1"),
        ("services.postgres.ports", ["5432:5432"], "postgres must not publish"),
        ("services.worker.command", ["opengrove", "serve"], "opengrove worker"),
        ("services.worker.environment.OPENGROVE_RUN_WORKERS", "false", "worker must not"),
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


def dockerignore_entries() -> set[str]:
    return {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_dockerignore_keeps_local_state_out() -> None:
    entries = dockerignore_entries()
    assert {".venv", "data", ".git", ".pytest_cache", ".ruff_cache", ".env"} <= entries
    # Local tools and throwaway environments: the launcher's private uv (~63 MB),
    # the SDK compatibility venvs (~35 MB), npm installs, benchmark output, caches.
    assert {
        ".tools",
        ".sdk-compat",
        "node_modules",
        "**/node_modules",
        "tests/sdk_compat/node_modules",
        "bench/results",
        "**/__pycache__",
        ".mypy_cache",
        ".cache",
    } <= entries
    # The build needs these: the lockfile, the project metadata and its readme.
    for needed in ("uv.lock", "pyproject.toml", "README.md", "app", "migrations"):
        assert needed not in entries
    assert not any(e.startswith("!") for e in entries), "no re-includes: keep the list simple"


def test_dockerignore_mirrors_gitignored_local_dirs() -> None:
    """Whatever git ignores as a local directory stays out of the image too."""
    gitignored = {
        line.strip().strip("/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip().endswith("/") and not line.startswith("#")
    }
    entries = dockerignore_entries()
    missing = {d for d in gitignored if d not in entries and f"**/{d}" not in entries}
    assert not missing, f".gitignore'd directories missing from .dockerignore: {missing}"


# --------------------------------------------------------------------------- tests: build backend


def test_build_backend_is_pinned_exactly() -> None:
    pyproject = tomllib.loads(PYPROJECT.read_text())
    assert check_build_system(pyproject) == []
    assert all("==" in req for req in pyproject["build-system"]["requires"])


@pytest.mark.parametrize(
    ("requires", "expected"),
    [
        (["hatchling"], "not pinned exactly"),
        (["hatchling>=1.27"], "not pinned exactly"),
        (["hatchling~=1.27.0"], "not pinned exactly"),
        (["hatchling==1.*"], "not pinned exactly"),
        (["setuptools==80.9.0"], "build-backend"),
        ([], "missing"),
    ],
)
def test_build_system_check_catches_loose_pins(requires: list[str], expected: str) -> None:
    pyproject = {"build-system": {"requires": requires, "build-backend": "hatchling.build"}}
    problems = check_build_system(pyproject)
    assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------------- tests: README


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_production_section_matches_compose_file(compose: dict[str, Any]) -> None:
    section = readme_section("Going to production").split("### docker compose", 1)[1]
    section = section.split("\n### ", 1)[0]
    assert "OPENGROVE_BOOTSTRAP_KEY" in section
    assert UP_COMMAND in section
    assert re.search(rf"^\s+{re.escape(UP_COMMAND)}\s*$", compose_header(), re.M)
    assert "v2.24" in section and "docker compose version" in section
    for name in API_SERVICES:
        for p in port_entries(compose["services"][name]):
            assert f"{DEFAULT_BIND_ADDRESS}:{p['published']}" in section, (name, p)
    for mention in (BIND_ADDRESS_VAR, "worker", "migrate", "PostgreSQL", "Qdrant", ".env"):
        assert mention in section, mention
    assert "POSTGRES_PASSWORD" in section
    assert "8000-8001" not in section and "8000\u20138001" not in section, "stale port range"


def test_compose_requires_a_bootstrap_key() -> None:
    """Keys are on in compose: without the first key, compose refuses to start."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    with pytest.raises(ValueError, match=BOOTSTRAP_KEY_VAR):
        interpolate_tree(raw, {})
    for name in APP_SERVICES:
        assert environment_of(load_compose()["services"][name])[BOOTSTRAP_KEY_VAR] == "k" * 40


# --------------------------------------------------------------------------- the sandbox

SANDBOX_SERVICE = "sandbox"
SANDBOX_NETWORK = "sandbox"
SANDBOX_DOCKERFILE = ROOT / "sandbox" / "Dockerfile"


def check_sandbox(doc: dict[str, Any]) -> list[str]:
    """code_interpreter's kernel gateway: built from the kernels' lock, on an internal network
    (no route out) shared with the worker alone, no ports, nothing of the server's."""
    problems: list[str] = []
    services = doc.get("services", {})
    sandbox = services.get(SANDBOX_SERVICE)
    if sandbox is None:
        return [f"service {SANDBOX_SERVICE!r} missing"]
    build = sandbox.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    if str(context).rstrip("/") not in ("./sandbox", "sandbox"):
        problems.append(f"{SANDBOX_SERVICE} must be built from ./sandbox, not {context!r}")
    network = (doc.get("networks") or {}).get(SANDBOX_NETWORK) or {}
    if network.get("internal") is not True:
        problems.append(f"network {SANDBOX_NETWORK!r} must be internal (no route out)")
    if list(sandbox.get("networks") or []) != [SANDBOX_NETWORK]:
        problems.append(f"{SANDBOX_SERVICE} must be on the {SANDBOX_NETWORK!r} network only")
    if sandbox.get("ports"):
        problems.append(f"{SANDBOX_SERVICE} must not publish ports")
    if sandbox.get("volumes") or sandbox.get("env_file"):
        problems.append(f"{SANDBOX_SERVICE} must not mount volumes or read the server's .env")
    leaked = {
        k
        for k in environment_of(sandbox)
        if k.startswith(("OPENGROVE_", "DATABASE", "QDRANT", "POSTGRES")) or k.endswith("_KEY")
    }
    if leaked:
        problems.append(f"{SANDBOX_SERVICE} gets the server's settings: {sorted(leaked)}")
    hc = sandbox.get("healthcheck") or {}
    if hc.get("disable") or "8888" not in healthcheck_text(sandbox):
        problems.append(f"{SANDBOX_SERVICE} needs a healthcheck on its port 8888")
    for name, svc in services.items():
        joined = SANDBOX_NETWORK in (svc.get("networks") or [])
        if name not in (SANDBOX_SERVICE, "worker") and joined:
            problems.append(f"{name} must not join the {SANDBOX_NETWORK!r} network")
    worker = services.get("worker", {})
    if SANDBOX_NETWORK not in (worker.get("networks") or []):
        problems.append(f"worker must join the {SANDBOX_NETWORK!r} network")
    env = environment_of(worker)
    url = urlsplit(env.get("OPENGROVE_SANDBOX_URL", ""))
    if env.get("OPENGROVE_SANDBOX") != "remote" or (url.hostname, url.port) != (
        SANDBOX_SERVICE,
        8888,
    ):
        problems.append("worker must use OPENGROVE_SANDBOX=remote at http://sandbox:8888")
    deps = worker.get("depends_on") or {}
    if (deps.get(SANDBOX_SERVICE) or {}).get("condition") != "service_healthy":
        problems.append("worker must wait for the sandbox to be healthy")
    return problems


def test_compose_sandbox_service(compose: dict[str, Any]) -> None:
    assert check_sandbox(compose) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("networks.sandbox.internal", None, "must be internal"),
        ("services.sandbox.networks", ["default", "sandbox"], "network only"),
        ("services.sandbox.ports", ["8888:8888"], "must not publish"),
        ("services.sandbox.volumes", ["opengrove-data:/data"], "must not mount"),
        ("services.sandbox.environment.OPENAI_API_KEY", "x", "server's settings"),
        ("services.api-1.networks", ["default", "sandbox"], "api-1 must not join"),
        ("services.worker.environment.OPENGROVE_SANDBOX", "local", "OPENGROVE_SANDBOX=remote"),
        ("services.worker.depends_on.sandbox", None, "healthy"),
    ],
)
def test_sandbox_check_catches_mistakes(
    compose: dict[str, Any], path: str, value: Any, expected: str
) -> None:
    problems = check_sandbox(mutated(compose, path, value))
    assert any(expected in p for p in problems), problems


def test_sandbox_image_installs_the_kernel_lock() -> None:
    instructions = dockerfile_instructions(SANDBOX_DOCKERFILE)
    runs = " ".join(a for k, a in instructions if k == "RUN")
    assert "uv sync --frozen" in runs and "--group gateway" in runs
    copies = " ".join(a for k, a in instructions if k == "COPY")
    assert "kernel/uv.lock" in copies
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "jupyter-kernelgateway" in " ".join(a for k, a in instructions if k == "CMD")
