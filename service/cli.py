"""The command line: `python -m service serve | migrate | seed-demo`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace

import asyncpg
import sqlalchemy.exc
from aiohttp import web

from service import db, demo, schema
from service.app import create_app
from service.config import Config, ConfigError
from service.logs import setup_logging

log = logging.getLogger("service")

SHUTDOWN_TIMEOUT = 10.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="apply pending migrations, then serve HTTP")
    serve.add_argument("--no-migrate", action="store_true", help="serve without migrating")
    commands.add_parser("migrate", help="apply pending migrations")
    commands.add_parser("seed-demo", help="load the demo customers and users (idempotent)")
    args = parser.parse_args(argv)

    try:
        config = Config.from_env()
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
        else:
            if not args.no_migrate:
                schema.upgrade(config.database_url)
            run(config)
    except (OSError, asyncpg.PostgresError, sqlalchemy.exc.SQLAlchemyError) as error:
        sys.exit(f"database error: {error}")


def run(config: Config) -> None:
    log.info("configuration: %s", config.masked())
    if config.dev_login:
        log.warning(
            "DEV_LOGIN=1: anyone who can reach %s can sign in as any email address. "
            "Never use this in production.",
            config.public_url,
        )
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        access_log=None,  # service.middleware.access_log writes the access lines
        print=lambda message: log.info("%s", message.strip()),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
