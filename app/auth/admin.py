"""What `opengrove keys …` and `opengrove projects …` do: operator commands on the database."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from sqlalchemy import select

from app.auth.keys import create_key, ensure_project, get_project, list_keys, revoke_key
from app.auth.models import Project
from app.config import Settings
from app.db import Database
from app.errors import APIError
from app.migrate import upgrade_database

QUOTAS = ("stored_bytes", "active_runs", "open_streams")


def _actions(parser: argparse.ArgumentParser) -> Any:
    actions = parser.add_subparsers(dest="action", required=True)
    add_parser = actions.add_parser

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        action = add_parser(name, **kwargs)
        # Also after the action (`keys create --data-dir D`); SUPPRESS keeps an earlier one.
        action.add_argument("--data-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return action

    actions.add_parser = add
    return actions


def add_commands(command: Any) -> None:
    """Register `keys` and `projects` on the CLI's subcommand factory."""
    keys = command("keys", "issue, list and revoke API keys")
    keys_commands = _actions(keys)
    create = keys_commands.add_parser("create", help="issue a key (printed once, last line)")
    create.add_argument("--project", required=True, help="project name (made if missing)")
    create.add_argument("--name", help="a label for the key")
    keys_commands.add_parser("list", help="keys with their project and state (never the key)")
    revoke = keys_commands.add_parser("revoke", help="revoke a key by its id (key_…)")
    revoke.add_argument("key_id")

    projects = command("projects", "list projects and set their limits")
    projects_commands = _actions(projects)
    projects_commands.add_parser("list", help="projects and their settings")
    update = projects_commands.add_parser("set", help="set a project's limits (made if missing)")
    update.add_argument("project")
    update.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="CLASS=N",
        help="requests per minute for a class (runs, assistants, files, messages, writes, "
        "reads) or tokens; 0 = unlimited; 'off' turns the project's rate limits off",
    )
    update.add_argument(
        "--quota", action="append", default=[], metavar="NAME=N", help=f"one of {QUOTAS}"
    )
    update.add_argument(
        "--models", help="comma-separated models the project may use ('*' = all configured)"
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade_database(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        await _act(db, args, settings)
    except APIError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    return 0


async def _act(db: Database, args: argparse.Namespace, settings: Settings) -> None:
    async with db.sessionmaker() as session:
        if args.command == "keys" and args.action == "create":
            row, key = await create_key(session, args.project, args.name)
            print(f"Created {row.id} for project {args.project} ({row.project_id}).")
            print("The key is shown only now; store it somewhere safe:")
            print(key)
        elif args.command == "keys" and args.action == "list":
            for key_row, project in await list_keys(session):
                state = "revoked" if key_row.revoked_at else "active"
                created = datetime.datetime.fromtimestamp(key_row.created_at, datetime.UTC)
                print(
                    f"{key_row.id}  {key_row.redacted}  project={project.name}  "
                    f"name={key_row.name or '-'}  {state}  created={created:%Y-%m-%d %H:%M}"
                )
        elif args.command == "keys" and args.action == "revoke":
            await revoke_key(session, args.key_id)
            print(
                f"Revoked {args.key_id}; servers refuse it within "
                f"{settings.key_cache_seconds:g} s (OPENGROVE_KEY_CACHE_SECONDS)."
            )
        elif args.command == "projects" and args.action == "list":
            for project in await session.scalars(select(Project).order_by(Project.name)):
                print(f"{project.id}  {project.name}  {project.settings or {}}")
        elif args.command == "projects" and args.action == "set":
            await ensure_project(session, args.project)
            project = await get_project(session, args.project)
            project.settings = _updated_settings(dict(project.settings or {}), args)
            await session.commit()
            print(f"{project.id}  {project.name}  {project.settings}")


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep:
            raise SystemExit(f"{flag} expects NAME=N, got {value!r}")
        pairs[name.strip()] = number.strip()
    return pairs


def _number(value: str, flag: str) -> int | None:
    try:
        number = int(value)
    except ValueError:
        raise SystemExit(f"{flag}: {value!r} is not a whole number") from None
    return number or None  # 0 = unlimited


def _updated_settings(settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    limits = dict(settings.get("rate_limits") or {})
    for value in args.rate_limit:
        if value.lower() in ("off", "on"):
            limits["enabled"] = value.lower() == "on"
    numbers = [value for value in args.rate_limit if value.lower() not in ("off", "on")]
    for name, value in _pairs(numbers, "--rate-limit").items():
        limits[name] = _number(value, "--rate-limit")
    if limits:
        settings["rate_limits"] = limits
    quotas = dict(settings.get("quotas") or {})
    for name, value in _pairs(args.quota, "--quota").items():
        if name not in QUOTAS:
            raise SystemExit(f"--quota: unknown quota {name!r}; expected one of {QUOTAS}")
        quotas[name] = _number(value, "--quota")
    if quotas:
        settings["quotas"] = quotas
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        settings["models"] = None if models == ["*"] else models
    return settings
