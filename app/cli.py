"""The `opengrove` command: serve · worker · migrate."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from app.auth import admin
from app.config import ENV_VARS, get_settings
from app.observability.logs import configure_logging, logging_config
from app.observability.multiprocess import prepare_metrics_dir


def _epilog() -> str:
    width = max(len(name) for name in ENV_VARS)
    lines = ["environment variables (command-line flags take precedence):"]
    lines += [f"  {name.ljust(width)}  {doc}" for name, doc in ENV_VARS.items()]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opengrove",
        description="Self-hosted OpenAI Assistants API v2 server.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument("--data-dir", help="data directory (OPENGROVE_DATA_DIR, default ./data)")
        return sub

    serve = command("serve", "run the API server (applies pending migrations first)")
    serve.add_argument("--host", help="interface to bind (OPENGROVE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (OPENGROVE_PORT, default 8000)")
    serve.add_argument(
        "--processes",
        type=int,
        help="server processes sharing the port, each an API and a run worker "
        "(OPENGROVE_PROCESSES, default 1; use about one per core)",
    )
    command("worker", "execute runs only (no HTTP API); start as many as you need")
    command("migrate", "apply pending database migrations and exit")
    admin.add_commands(command)
    return parser


def _apply_flags(args: argparse.Namespace) -> None:
    # Flags become environment variables so every process (and reload) sees the same settings.
    for flag, env in (
        ("host", "OPENGROVE_HOST"),
        ("port", "OPENGROVE_PORT"),
        ("data_dir", "OPENGROVE_DATA_DIR"),
        ("processes", "OPENGROVE_PROCESSES"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            os.environ[env] = str(value)
    get_settings.cache_clear()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _apply_flags(args)
    settings = get_settings()
    configure_logging(settings)
    if args.command == "migrate":
        from app.migrate import upgrade_database

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(upgrade_database(settings.resolved_database_url))
        print("migrations applied", file=sys.stderr)
        return 0
    if args.command in ("keys", "projects"):
        return asyncio.run(admin.run(args, settings))
    if args.command == "worker":
        asyncio.run(_run_worker())
        return 0
    if args.command == "serve":
        import uvicorn

        if settings.processes > 1 and settings.run_migrations_on_start:
            # Once, here, before the processes start: they would race on SQLite.
            from app.migrate import upgrade_database

            settings.data_dir.mkdir(parents=True, exist_ok=True)
            asyncio.run(upgrade_database(settings.resolved_database_url))
            os.environ["OPENGROVE_MIGRATE_ON_START"] = "false"
        prepare_metrics_dir(settings)  # before uvicorn starts the worker processes
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            log_config=logging_config(settings),  # each worker process logs as this one
            access_log=settings.access_log,
            backlog=4096,
            workers=settings.processes if settings.processes > 1 else None,
        )
        return 0
    return 2


async def _run_worker() -> None:
    import signal

    from app.runtime import Runtime

    runtime = await Runtime.start(get_settings(), run_workers=True)
    runtime.settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runtime.stop()


if __name__ == "__main__":
    raise SystemExit(main())
