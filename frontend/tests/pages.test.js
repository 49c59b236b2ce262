// The plain-JavaScript parts of the pages: `npm test` (node's test runner).
import assert from "node:assert/strict";
import { test } from "node:test";
import { safeNext } from "../src/routes/login/next.js";
import { timeAgo } from "../src/lib/time.js";
import { describeUserAgent } from "../src/lib/useragent.js";

const ORIGIN = "https://app.example.com";

test("next stays on this site", () => {
  assert.equal(safeNext("/account?tab=1#x", ORIGIN), "/account?tab=1#x");
  assert.equal(safeNext("/admin", ORIGIN), "/admin");
});

test("next that leaves the site, or is missing, goes to the customers", () => {
  for (const next of [null, "", "customer", "//evil.example", "/\\evil.example", "/\t/evil.example",
    "https://evil.example/", "javascript:alert(1)", "/login?next=/admin"]) {
    assert.equal(safeNext(next, ORIGIN), "/customer", String(next));
  }
});

test("user agents read as browser on system", () => {
  const cases = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36":
      "Chrome on Windows",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0":
      "Edge on Windows",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15":
      "Safari on macOS",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0": "Firefox on Linux",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36":
      "Chrome on Android",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1":
      "Safari on iOS",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1":
      "Chrome on iOS",
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36":
      "Chrome on ChromeOS",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 OPR/109.0.0.0":
      "Opera on Windows",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36":
      "Chrome on Linux",
    "curl/8.5.0": "Unknown browser",
    "": "Unknown browser",
  };
  for (const [ua, expected] of Object.entries(cases)) assert.equal(describeUserAgent(ua), expected, ua);
});

test("times read relative to now", () => {
  const now = Date.parse("2026-01-01T12:00:00Z");
  assert.equal(timeAgo("2026-01-01T12:00:03Z", now), "now");
  assert.equal(timeAgo("2026-01-01T11:55:00Z", now), "5 minutes ago");
  assert.equal(timeAgo("2026-01-01T10:00:00Z", now), "2 hours ago");
  assert.equal(timeAgo("2025-12-31T12:00:00Z", now), "yesterday");
  assert.equal(timeAgo(null, now), "never");
});
