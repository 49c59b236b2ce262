"""The command line: `python -m service serve | migrate | seed-demo | users ... | sessions ...`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace
from typing import Any

import asyncpg
import sqlalchemy.exc

from service import db, demo, operator, schema, server
from service.config import Config, ConfigError
from service.errors import ApiError
from service.logs import setup_logging

log = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="apply pending migrations, then serve HTTP")
    serve.add_argument("--no-migrate", action="store_true", help="serve without migrating")
    commands.add_parser("migrate", help="apply pending migrations")
    commands.add_parser("seed-demo", help="load the demo customers and users (idempotent)")
    _add_operator_commands(commands)
    args = parser.parse_args(argv)

    try:
        config = Config.from_env(serving=args.command == "serve")
    except ConfigError as error:
        sys.exit(f"configuration error: {error}")
    setup_logging(config.log_format)
    if config.database_url is None:
        config = replace(config, database_url=db.start_embedded())
    assert config.database_url is not None

    try:
        if args.command == "migrate":
            schema.upgrade(config.database_url)
        elif args.command == "seed-demo":
            asyncio.run(demo.seed(config.database_url))
            log.info("demo data loaded")
        elif args.command in ("users", "sessions"):
            asyncio.run(operator.run(config.database_url, config, args))
        else:
            if not args.no_migrate:
                schema.upgrade(config.database_url)
            run(config)
    except ConfigError as error:  # found only as the service starts, such as a port in use
        sys.exit(f"configuration error: {error}")
    except operator.OperatorError as error:
        sys.exit(f"error: {error}")
    except ApiError as error:  # a refusal the API would give too, such as removing the last admin
        sys.exit(f"error: {error.message}")
    except (OSError, asyncpg.PostgresError, sqlalchemy.exc.SQLAlchemyError) as error:
        sys.exit(f"database error: {error}")


def _add_operator_commands(commands: Any) -> None:
    users = commands.add_parser("users", help="list, add, promote, demote, disable, enable users")
    user_actions = users.add_subparsers(dest="action", required=True)
    user_actions.add_parser("list", help="every user")
    add = user_actions.add_parser("add", help="pre-provision a user by email")
    add.add_argument("email")
    add.add_argument("--admin", action="store_true", help="make them an administrator")
    for action, text in (
        ("promote", "make an administrator"),
        ("demote", "take administrator rights away"),
        ("disable", "refuse sign-in and revoke every session"),
        ("enable", "allow sign-in again"),
    ):
        user_actions.add_parser(action, help=text).add_argument("email")

    sessions = commands.add_parser("sessions", help="list, revoke and purge sessions")
    session_actions = sessions.add_subparsers(dest="action", required=True)
    listing = session_actions.add_parser("list", help="live sessions")
    listing.add_argument("--user", metavar="EMAIL", help="only this user's")
    revoke = session_actions.add_parser("revoke", help="revoke one session, or a user's all")
    revoke.add_argument("id", nargs="?", help="the session's id")
    revoke.add_argument("--user", metavar="EMAIL", help="every session of this user")
    session_actions.add_parser("purge-expired", help="delete expired and idle sessions now")


def run(config: Config) -> None:
    log.info("configuration: %s", config.masked())
    log.info(
        "Postgres connections: up to %d (WORKERS=%d x %d per worker), plus one while migrating",
        config.workers * config.connections_per_worker,
        config.workers,
        config.connections_per_worker,
    )
    if config.dev_login:
        log.warning(
            "DEV_LOGIN=1: anyone who can reach %s can sign in as any email address. "
            "Never use this in production.",
            config.public_url,
        )
    server.serve(config)
