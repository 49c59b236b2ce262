"""The app in a real browser: Chromium, the real service, a real database and the dev login.

Every test watches the console: any error (or uncaught exception) fails it, except Chrome's own
"Failed to load resource: ... status of 40x" lines, which the API's 401/403 answers cause.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    ViewportSize,
    expect,
)

from tests.conftest import Service

ROOT = Path(__file__).parent.parent
AXE = ROOT / "frontend" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 812}
TIMEOUT = 10_000  # ms, for every `expect`

# What Chrome logs for any 4xx answer to a fetch; the app's 401/403 handling causes these.
EXPECTED_CONSOLE_ERROR = re.compile(
    r"^Failed to load resource: the server responded with a status of 40\d \("
)
REASONS = re.compile(r"Your session has ended; sign in again\.|This account is disabled\.")

expect.set_options(timeout=TIMEOUT)


class Tabs:
    """Browser contexts (one profile each) on the service, and the console errors they log."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    async def open(self, viewport: ViewportSize = DESKTOP) -> Page:
        context = await self.browser.new_context(viewport=viewport, base_url=self.base_url)
        self.contexts.append(context)
        page = await context.new_page()

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error" and not EXPECTED_CONSOLE_ERROR.match(message.text):
                self.errors.append(f"console on {page.url}: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.errors.append(f"page error on {page.url}: {error}"))
        return page

    def assert_no_console_errors(self) -> None:
        assert self.errors == []

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def tabs(chromium: Browser, web_app: Service) -> AsyncIterator[Tabs]:
    opened = Tabs(chromium, web_app.base_url)
    yield opened
    await opened.close()


def path_of(url: str) -> str:
    return urlsplit(url).path


def on_login(next_path: str | None = None) -> Any:
    """A URL predicate: /login, with ?next= naming `next_path` when given."""

    def matches(url: str) -> bool:
        parts = urlsplit(url)
        if parts.path != "/login":
            return False
        return next_path is None or parse_qs(parts.query).get("next") == [next_path]

    return matches


async def sign_in(page: Page, email: str) -> None:
    """Sign in through the dev login on the login page (going there unless already on it)."""
    if path_of(page.url) != "/login":
        await page.goto("/login")
    await page.get_by_label("Email (dev login)").fill(email)
    await page.get_by_role("button", name="Sign in (dev login)").click()
    await page.wait_for_url(lambda url: path_of(url) != "/login", timeout=TIMEOUT)


async def open_customers(page: Page) -> None:
    await page.goto("/customer")
    await expect(cell(page, "a001")).to_be_visible()


def cell(page: Page, text: str) -> Locator:
    return page.get_by_role("cell", name=text, exact=True)


def banner(page: Page) -> Locator:
    return page.get_by_role("banner")


# -- 1. signing in ------------------------------------------------------------------------------


async def test_signed_out_customer_page_signs_in_and_comes_back(tabs: Tabs) -> None:
    page = await tabs.open()
    await page.goto("/customer")
    await page.wait_for_url(on_login("/customer"), timeout=TIMEOUT)
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_text("Sign in to continue.")).to_be_visible()

    await sign_in(page, "user01@example.com")

    assert path_of(page.url) == "/customer"
    await expect(page.get_by_role("heading", name="Customers")).to_be_visible()
    for name in ("a001", "a010"):
        await expect(cell(page, name)).to_be_visible()
    await expect(cell(page, "a011")).to_have_count(0)
    await expect(page.get_by_role("navigation", name="Customer pages")).to_contain_text(
        "Page 1 of 2"
    )
    await expect(banner(page)).to_contain_text("Signed in as user01@example.com")

    await page.get_by_role("button", name="Next").click()
    await expect(cell(page, "a020")).to_be_visible()
    await expect(cell(page, "a001")).to_have_count(0)
    await expect(page.get_by_text("Page 2 of 2")).to_be_visible()
    tabs.assert_no_console_errors()


async def test_two_tabs_on_the_login_page_both_sign_in(tabs: Tabs) -> None:
    """As after a session ends: every open tab lands on /login, each with its own nonce."""
    first = await tabs.open()
    await first.goto("/customer")
    await first.wait_for_url(on_login("/customer"), timeout=TIMEOUT)
    second = await first.context.new_page()
    await second.goto("/account")
    await second.wait_for_url(on_login("/account"), timeout=TIMEOUT)
    for page in (first, second):
        await expect(page.get_by_role("button", name="Sign in (dev login)")).to_be_enabled()

    await sign_in(first, "user01@example.com")
    await sign_in(second, "user01@example.com")

    assert (path_of(first.url), path_of(second.url)) == ("/customer", "/account")
    await expect(banner(second)).to_contain_text("Signed in as user01@example.com")
    tabs.assert_no_console_errors()


# -- 2. adding and deleting a customer ----------------------------------------------------------


async def test_add_customer_with_field_error_then_delete_it(tabs: Tabs, db: asyncpg.Pool) -> None:
    page = await tabs.open()
    await sign_in(page, "user01@example.com")
    await open_customers(page)
    form = page.get_by_role("region", name="Add a customer")
    name = form.get_by_label("Name")
    email = form.get_by_label("Email")

    await name.fill("Zed Browser")
    await email.fill("not-an-email")
    await form.get_by_role("button", name="Add customer").click()
    error = form.locator("#customer-email-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(re.compile("email", re.IGNORECASE))
    await expect(email).to_have_attribute("aria-invalid", "true")
    await expect(email).to_have_accessible_description(await error.inner_text())
    input_box, error_box = await email.bounding_box(), await error.bounding_box()
    assert input_box is not None and error_box is not None
    assert error_box["y"] >= input_box["y"] + input_box["height"] - 1, "error is under the field"
    await expect(name).not_to_have_attribute("aria-invalid", "true")
    assert await db.fetchval("SELECT count(*) FROM customers") == 20

    await email.fill("zed.browser@example.com")
    await form.get_by_role("button", name="Add customer").click()
    await expect(page.get_by_text("Added Zed Browser.")).to_be_visible()
    await expect(error).to_have_count(0)
    # Oldest first, ten a page: the 21st customer is alone on page 3, which the page shows.
    await expect(page.get_by_text("Page 3 of 3")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="zed.browser@example.com")
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("Zed Browser")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM customers WHERE name = 'Zed Browser' AND email = $1",
            "zed.browser@example.com",
        )
        == 1
    )
    await expect(name).to_have_value("")
    await expect(email).to_have_value("")

    # Delete asks first; Escape (and Cancel) back out without deleting.
    await row.get_by_role("button", name="Delete").click()
    confirm = row.get_by_role("button", name="Confirm delete")
    await expect(confirm).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(confirm).to_have_count(0)
    await expect(row.get_by_role("button", name="Delete")).to_be_focused()
    await row.get_by_role("button", name="Delete").click()
    await row.get_by_role("button", name="Cancel").click()
    await expect(confirm).to_have_count(0)
    assert await db.fetchval("SELECT count(*) FROM customers") == 21

    await row.get_by_role("button", name="Delete").click()
    await confirm.click()
    await expect(page.get_by_text("Deleted Zed Browser.")).to_be_visible()
    await expect(row).to_have_count(0)
    # Page 3 is gone with its only row: the page falls back to the new last page.
    await expect(page.get_by_text("Page 2 of 2")).to_be_visible()
    await expect(cell(page, "a020")).to_be_visible()
    assert await db.fetchval("SELECT count(*) FROM customers WHERE name = 'Zed Browser'") == 0
    assert await db.fetchval("SELECT count(*) FROM customers") == 20
    tabs.assert_no_console_errors()


# -- 3. signing out -----------------------------------------------------------------------------


async def test_sign_out_then_back_button_shows_no_customer_data(tabs: Tabs) -> None:
    page = await tabs.open()
    await sign_in(page, "user01@example.com")
    await open_customers(page)
    customer_answers: list[int] = []
    page.on(
        "response",
        lambda response: (
            customer_answers.append(response.status)
            if path_of(response.url) == "/api/customer"
            else None
        ),
    )

    await banner(page).get_by_role("button", name="Sign out").click()
    await page.wait_for_url(on_login(), timeout=TIMEOUT)
    await expect(page.get_by_text("You have signed out.")).to_be_visible()
    await expect(banner(page)).not_to_contain_text("Signed in as")
    await expect(banner(page).get_by_role("link", name="Customers")).to_have_count(0)

    await page.go_back()
    await page.wait_for_url(on_login("/customer"), timeout=TIMEOUT)
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(
        page.get_by_text(REASONS).or_(page.get_by_text("Sign in to continue."))
    ).to_be_visible()
    await expect(cell(page, "a001")).to_have_count(0)
    await expect(page.get_by_role("table")).to_have_count(0)
    assert 200 not in customer_answers, "customers were fetched after signing out"

    # A fresh load of the page is no different.
    await page.goto("/customer")
    await page.wait_for_url(on_login("/customer"), timeout=TIMEOUT)
    await expect(cell(page, "a001")).to_have_count(0)
    tabs.assert_no_console_errors()


# -- 4. signing out another session -------------------------------------------------------------


async def test_signing_out_another_session_ends_it_in_that_browser(tabs: Tabs) -> None:
    first = await tabs.open()
    second = await tabs.open()
    await sign_in(second, "user01@example.com")
    await open_customers(second)
    await sign_in(first, "user01@example.com")

    await first.goto("/account")
    cards = first.get_by_role("article")
    await expect(cards).to_have_count(2)
    this_device = cards.filter(has_text="This device")
    await expect(this_device).to_have_count(1)
    await expect(first.get_by_text("1 other session.")).to_be_visible()
    await cards.filter(has_not_text="This device").get_by_role("button", name="Sign out").click()
    await expect(first.get_by_text("Signed out that session.")).to_be_visible()
    await expect(cards).to_have_count(1)
    await expect(this_device).to_have_count(1)
    await expect(first.get_by_text("No other sessions.")).to_be_visible()

    await second.get_by_role("button", name="Next").click()
    await second.wait_for_url(on_login("/customer"), timeout=TIMEOUT)
    await expect(second.get_by_text("Your session has ended; sign in again.")).to_be_visible()
    await expect(cell(second, "a011")).to_have_count(0)
    await expect(banner(second)).not_to_contain_text("Signed in as")

    # The first browser is still signed in.
    await first.goto("/customer")
    await expect(cell(first, "a001")).to_be_visible()
    tabs.assert_no_console_errors()


# -- 5. an admin disables a signed-in user ------------------------------------------------------


async def test_admin_disabling_a_user_ends_their_open_page(tabs: Tabs, db: asyncpg.Pool) -> None:
    user = await tabs.open()
    admin = await tabs.open()
    await sign_in(user, "user01@example.com")
    await open_customers(user)
    await sign_in(admin, "admin01@example.com")

    await admin.goto("/admin")
    users = admin.get_by_role("region", name="Users", exact=True)
    own = users.get_by_role("row").filter(has_text="admin01@example.com")
    await expect(own).to_contain_text("you")
    for hidden in ("Disable", "Demote", "Delete"):
        await expect(own.get_by_role("button", name=hidden, exact=True)).to_have_count(0)
    await expect(own.get_by_role("button", name="Revoke sessions")).to_be_visible()
    disabled_admin = users.get_by_role("row").filter(has_text="admin02@example.com")
    await expect(disabled_admin.get_by_role("button", name="Enable")).to_be_visible()

    row = users.get_by_role("row").filter(has_text="user01@example.com")
    await expect(row).to_contain_text("Active")
    await row.get_by_role("button", name="Disable", exact=True).click()
    await expect(users.get_by_text("Disabled user01@example.com.")).to_be_visible()
    await expect(row).to_contain_text("Disabled")
    await expect(row.get_by_role("button", name="Enable")).to_be_visible()
    assert await db.fetchval("SELECT disabled FROM users WHERE email = 'user01@example.com'"), (
        "not disabled in the database"
    )

    await user.get_by_role("button", name="Next").click()
    await user.wait_for_url(on_login("/customer"), timeout=TIMEOUT)
    await expect(user.get_by_role("status").filter(has_text=REASONS)).to_be_visible()
    await expect(cell(user, "a011")).to_have_count(0)
    await expect(banner(user)).not_to_contain_text("Signed in as")
    tabs.assert_no_console_errors()


# -- 6. a non-admin and the admin page ----------------------------------------------------------


async def test_admin_page_is_not_allowed_for_a_user(tabs: Tabs) -> None:
    user = await tabs.open()
    await sign_in(user, "user01@example.com")
    await open_customers(user)
    nav = banner(user).get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Customers")).to_be_visible()
    await expect(nav.get_by_role("link", name="Account")).to_be_visible()
    await expect(nav.get_by_role("link", name="Admin")).to_have_count(0)

    admin_answers: list[str] = []
    user.on(
        "response",
        lambda response: (
            admin_answers.append(response.url)
            if path_of(response.url).startswith("/api/admin")
            else None
        ),
    )
    await user.goto("/admin")
    main = user.get_by_role("main")
    await expect(main.get_by_text("Not allowed.")).to_be_visible()
    await expect(main.get_by_role("table")).to_have_count(0)
    await expect(main.get_by_role("button")).to_have_count(0)
    await expect(main).not_to_contain_text("@example.com")
    await expect(main.get_by_role("heading", name="Users")).to_have_count(0)
    assert path_of(user.url) == "/admin"
    assert admin_answers == []

    admin = await tabs.open()
    await sign_in(admin, "admin01@example.com")
    await admin.goto("/customer")
    admin_link = (
        banner(admin).get_by_role("navigation", name="Main").get_by_role("link", name="Admin")
    )
    await expect(admin_link).to_be_visible()
    await admin_link.click()
    await admin.wait_for_url(lambda url: path_of(url) == "/admin", timeout=TIMEOUT)
    await expect(admin.get_by_role("region", name="Users", exact=True)).to_contain_text(
        "user01@example.com"
    )
    await expect(admin.get_by_text("Not allowed.")).to_have_count(0)
    tabs.assert_no_console_errors()


# -- 7 and 8. every page: no console errors, no serious axe violations, screenshots -------------

PAGES: list[tuple[str, str, Callable[[Page], Locator]]] = [
    # name, path, something that shows the page has loaded its data
    ("landing", "/", lambda page: page.get_by_text("You are signed in as")),
    ("customer", "/customer", lambda page: cell(page, "a001")),
    ("account", "/account", lambda page: page.get_by_text("This device")),
    ("admin", "/admin", lambda page: page.get_by_role("region", name="Audit log events")),
    ("not-found", "/no-such-page", lambda page: page.get_by_role("heading", name="Page not found")),
    ("login-signed-in", "/login", lambda page: page.get_by_label("Email (dev login)")),
]


async def axe_violations(page: Page, within: str = "html") -> list[dict[str, Any]]:
    """What axe-core finds on the page, or in the part that the CSS selector `within` picks."""
    # evaluate() is not subject to the page's Content-Security-Policy; a script tag would be.
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(AXE.read_text())
    violations: list[dict[str, Any]] = await page.evaluate(
        """async (within) => (await axe.run(within)).violations.map(v => ({
            id: v.id, impact: v.impact, nodes: v.nodes.length,
            targets: v.nodes.slice(0, 3).map(n => n.target.join(' ')),
        }))""",
        within,
    )
    return violations


def serious(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in violations if v["impact"] in ("serious", "critical")]


async def settle(page: Page) -> None:
    """Nothing left loading: no "Loading…" status and no busy table."""
    await expect(page.get_by_role("main").get_by_text("Loading…")).to_have_count(0)
    await expect(page.locator("[aria-busy=true]")).to_have_count(0)


@pytest.mark.parametrize("width", ["desktop", "phone"])
async def test_every_page_renders_cleanly_and_accessibly(tabs: Tabs, width: str) -> None:
    assert AXE.is_file(), "run make: axe-core comes with the frontend's node_modules"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    viewport = DESKTOP if width == "desktop" else PHONE
    problems: dict[str, list[dict[str, Any]]] = {}

    # Signed out: the landing page says so, and the login page.
    page = await tabs.open(viewport)
    await page.goto("/")
    await expect(page.get_by_text("You are not signed in.")).to_be_visible()
    problems["landing-signed-out"] = serious(await axe_violations(page))
    await page.goto("/login")
    await expect(page.get_by_role("button", name="Sign in (dev login)")).to_be_visible()
    await settle(page)
    problems["login"] = serious(await axe_violations(page))
    await page.screenshot(path=SCREENSHOTS / f"login-{width}.png", full_page=True)

    # Signed in as an admin, so /admin shows its data.
    await sign_in(page, "admin01@example.com")
    for name, path, loaded in PAGES:
        await page.goto(path)
        await expect(loaded(page)).to_be_visible()
        await settle(page)
        if name != "login-signed-in":
            await page.screenshot(path=SCREENSHOTS / f"{name}-{width}.png", full_page=True)
        problems[name] = serious(await axe_violations(page))

    # The same pages reached by the app's own links rather than a fresh load.
    await page.goto("/")
    await page.get_by_role("link", name="Open the customer list").click()
    await expect(cell(page, "a001")).to_be_visible()
    await banner(page).get_by_role("link", name="Account").click()
    await expect(page.get_by_text("This device")).to_be_visible()
    await banner(page).get_by_role("link", name="Admin").click()
    await expect(page.get_by_role("region", name="Audit log events")).to_be_visible()
    await settle(page)

    assert {name: found for name, found in problems.items() if found} == {}
    tabs.assert_no_console_errors()


async def test_page_width_fits_a_phone(tabs: Tabs) -> None:
    """On a phone the page itself never scrolls sideways (wide tables scroll in their box)."""
    page = await tabs.open(PHONE)
    await sign_in(page, "admin01@example.com")
    overflowing = {}
    for name, path, loaded in PAGES:
        await page.goto(path)
        await expect(loaded(page)).to_be_visible()
        await settle(page)
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            overflowing[name] = width
    assert overflowing == {}
    tabs.assert_no_console_errors()


# -- 9. the admin page: the status panel, phone cards, the audit filter -------------------------

STATUS_PANEL = "section[aria-labelledby=status-heading]"


async def refused_sign_in(page: Page, email: str) -> None:
    """A dev-login sign-in the service refuses (here, a disabled user's), left on /login."""
    await page.goto("/login")
    await page.get_by_label("Email (dev login)").fill(email)
    await page.get_by_role("button", name="Sign in (dev login)").click()
    await expect(page.get_by_role("alert")).to_contain_text("disabled")


async def test_admin_status_panel_draws_the_days_sign_ins_accessibly(tabs: Tabs) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await tabs.open()
    await refused_sign_in(page, "user02@example.com")
    await sign_in(page, "admin01@example.com")

    await page.goto("/admin")
    status = page.get_by_role("region", name="Status", exact=True)
    chart = status.get_by_role("img", name=re.compile(r"^Sign-ins per hour"))
    await expect(chart).to_have_accessible_name(re.compile("1 succeeded and 1 failed"))
    await expect(status.get_by_role("definition").filter(has_text="1 failed")).to_be_visible()
    await expect(status.get_by_role("listitem").filter(has_text="user_disabled")).to_contain_text(
        "1"
    )
    await expect(status.get_by_text("Coherent", exact=True)).to_be_visible()
    # Every hour's numbers, as text for screen readers: a header row and 24 hours.
    hours = status.get_by_role("table", name="Sign-ins per hour")
    await expect(hours.get_by_role("row")).to_have_count(25)
    await settle(page)

    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        await page.set_viewport_size(viewport)
        await expect(chart).to_be_visible()
        assert await axe_violations(page, STATUS_PANEL) == [], width
        await page.locator(STATUS_PANEL).screenshot(path=SCREENSHOTS / f"admin-status-{width}.png")
    tabs.assert_no_console_errors()


async def test_admin_rows_are_cards_with_their_actions_in_view_on_a_phone(tabs: Tabs) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await tabs.open(PHONE)
    await sign_in(page, "admin01@example.com")
    await page.goto("/admin")
    users = page.get_by_role("region", name="Users", exact=True)
    row = users.get_by_role("row").filter(has_text="user01@example.com")
    await expect(row).to_contain_text("Active")
    await settle(page)

    for name in ("Disable", "Promote", "Revoke sessions", "Delete"):
        button = row.get_by_role("button", name=name, exact=True)
        await button.scroll_into_view_if_needed()
        # Wholly on screen, clipped by no scrolling box, and the topmost thing where it is.
        await expect(button).to_be_in_viewport(ratio=1)
        on_top = await button.evaluate(
            """b => { const r = b.getBoundingClientRect();
                const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
                return b.contains(hit); }"""
        )
        assert on_top, f"{name} is covered"
    # The name is there whole, beside its heading, and no table scrolls sideways.
    await expect(row.get_by_role("cell", name="Name user01", exact=True)).to_be_visible()
    overflow = await page.locator(".table-wrap").evaluate_all(
        "wraps => wraps.map(w => w.scrollWidth - w.clientWidth)"
    )
    assert overflow and set(overflow) == {0}
    await row.screenshot(path=SCREENSHOTS / "admin-user-card-phone.png")

    await row.get_by_role("button", name="Revoke sessions").click()
    await expect(users.get_by_text("Signed user01@example.com out of 0 sessions.")).to_be_visible()
    tabs.assert_no_console_errors()


async def test_audit_log_filters_by_kind_and_by_email(tabs: Tabs) -> None:
    other = await tabs.open()
    await refused_sign_in(other, "user02@example.com")
    await sign_in(other, "user01@example.com")
    page = await tabs.open()
    await sign_in(page, "admin01@example.com")
    await page.goto("/admin")
    audit = page.get_by_role("region", name="Audit log", exact=True)
    events = audit.get_by_role("region", name="Audit log events").locator("tbody tr")
    await expect(events).to_have_count(3)
    kind = audit.get_by_label("Kind")
    email = audit.get_by_label("User email")
    # The kinds come from the service: "All kinds" and every kind it records.
    await expect(kind.locator("option")).to_have_count(15)

    async def filter_by(chosen: str, address: str) -> None:
        await kind.select_option(chosen)
        await email.fill(address)
        await audit.get_by_role("button", name="Filter").click()

    await filter_by("login_ok", "")
    await expect(events).to_have_count(2)
    for n in range(2):
        await expect(events.nth(n)).to_contain_text("login_ok")

    await filter_by("", "USER01@example.com")
    await expect(events).to_have_count(1)
    await expect(events.first).to_contain_text("user01@example.com")
    await expect(events.first).to_contain_text("login_ok")

    await filter_by("login_failed", "user02@example.com")
    await expect(events).to_have_count(1)
    await expect(events.first).to_contain_text("user_disabled")

    await filter_by("logout", "user01@example.com")
    await expect(audit.get_by_text("No events match these filters.")).to_be_visible()

    await audit.get_by_role("button", name="Show all").click()
    await expect(events).to_have_count(3)
    await expect(kind).to_have_value("")
    tabs.assert_no_console_errors()


# -- the HTML shell over HTTP -------------------------------------------------------------------


async def test_shell_security_and_cache_headers(web_app: Service) -> None:
    client = web_app.browser()

    for path in ("/", "/customer", "/some/client/route", "/index.html"):
        response = await client.get(path)
        assert response.status == 200, path
        assert response.content_type == "text/html", path
        assert "kit.start(app, element)" in await response.text(), path
        assert response.headers["Cache-Control"] == "no-cache", path
        policy = response.headers["Content-Security-Policy"]
        directives = {d.split()[0]: d.split()[1:] for d in policy.split("; ")}
        assert directives["frame-ancestors"] == ["'none'"], path
        assert "'unsafe-inline'" not in directives["script-src"], path
        assert directives["object-src"] == ["'none'"], path
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin-allow-popups"
        assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        assert response.headers["X-Content-Type-Options"] == "nosniff"

    html = await (await client.get("/")).text()
    assets = re.findall(r'"(/_app/immutable/[^"]+)"', html)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        response = await client.get(asset)
        assert response.status == 200, asset
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable", asset
        assert response.headers["X-Content-Type-Options"] == "nosniff", asset

    favicon = await client.get("/favicon.svg")
    assert favicon.status == 200
    assert favicon.headers["Cache-Control"] == "no-cache"

    for path in ("/api/no-such-thing", "/api/", "/api/customer/1/nope"):
        response = await client.get(path)
        assert response.status == 404, path
        assert response.content_type == "application/json", path
        assert "error" in await response.json(), path


async def test_shell_answers_deep_links_in_the_browser(tabs: Tabs) -> None:
    page = await tabs.open()
    response = await page.goto("/some/client/route")
    assert response is not None and response.status == 200
    await expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    await expect(page.get_by_text("/some/client/route")).to_be_visible()
    await expect(page).to_have_title(re.compile("Page not found"))

    api = await page.request.get("/api/no-such-thing")
    assert api.status == 404
    assert api.headers["content-type"].startswith("application/json")
    tabs.assert_no_console_errors()
