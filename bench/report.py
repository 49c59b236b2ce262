"""The bench's results as Markdown, JSON and a chart, and the machine they were measured on."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

SCENARIOS = {
    "healthz": "GET /healthz",
    "api_user": "GET /api/user with a session",
    "api_customer": "GET /api/customer (100 rows) with a session",
    "login": "POST /api/login, a fresh token each",
    "spa_shell": "GET / (index.html)",
    "spa_asset": "GET one /_app/immutable/ asset",
    "api_user_10k": "GET /api/user, 10k rows in sessions",
    "api_user_1m": "GET /api/user, 1M rows in sessions",
}


def _run(command: list[str], cwd: Path | None = None, *, any_status: bool = False) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed commands, no shell
            command, cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 or any_status else ""


def machine_info(service_dir: Path) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    memory_kib = int(meminfo[meminfo.index("MemTotal:") + 1])
    versions = {}
    for package in ("aiohttp", "gunicorn", "asyncpg", "google-auth"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = _run(["git", "rev-parse", "--short", "HEAD"], service_dir)
    changed = _run(
        ["git", "status", "--porcelain", "--", "service", "migrations"],
        service_dir,
    )
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": (_run(["wrk", "-v"], any_status=True).split(" Copyright") or [None])[0],
        "packages": versions,
        "git_commit": commit or None,
        "uncommitted_service_changes": changed.splitlines() if changed else [],
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, each as a ratio or a number from this run."""
    s = results["scenarios"]
    checks: list[dict[str, Any]] = []

    def add(
        target: str,
        measured: str,
        ok: bool | None,
        balanced: float | str | None = "",
        balanced_ok: bool | None = None,
    ) -> None:
        check = {"target": target, "measured": measured, "met": ok}
        if balanced != "":  # a ratio of rps, also given over the runs without †
            check.update(measured_without_unbalanced_runs=balanced, met_without=balanced_ok)
        checks.append(check)

    if "api_user" in s and "healthz" in s:
        ratio = s["api_user"]["rps"] / s["healthz"]["rps"]
        even = _balanced_ratio(results, "api_user", "healthz")
        add(
            "api_user ≥ 60% of healthz rps",
            f"{ratio:.1%}",
            ratio >= 0.60,
            even,
            None if even is None else even >= 0.60,
        )
    if "login" in s:
        p99 = s["login"]["p99_ms"]
        add("login p99 < 25 ms at 50 concurrent logins", f"{p99:.1f} ms", p99 < 25)
        fetches = s["login"]["cert_fetches_during_scenario"]
        workers = results.get("worker_processes_verifying_tokens", 0)
        add(
            "certs fetched once per worker lifetime, not per login",
            f"{results['cert_fetches_total']} fetches in all for {workers} workers "
            f"({fetches} during the login scenario's {s['login']['sessions_created']:,} logins)",
            results["cert_fetches_total"] <= workers,
        )
    if "api_user_1m" in s and "api_user_10k" in s:
        big, small = s["api_user_1m"], s["api_user_10k"]
        ratio = big["rps"] / small["rps"]
        even = _balanced_ratio(results, "api_user_1m", "api_user_10k")
        add(
            "api_user_1m within 10% of api_user_10k (rps)",
            f"{ratio:.1%} (p50 {small['p50_ms']:.2f} → {big['p50_ms']:.2f} ms)",
            abs(1 - ratio) <= 0.10,
            even,
            None if even is None else abs(1 - even) <= 0.10,
        )
    errors = sum(entry["errors"] for entry in s.values())
    add("no errors (socket errors, non-2xx) in any scenario", str(errors), errors == 0)
    for variant, label in (("sql", "SQL DELETE"), ("logout", "logout on A")):
        entry = results.get("revocation", {}).get(variant)
        if entry is None:
            continue
        p99 = entry["p99_ms"]
        ok = entry["timeouts"] == 0 and p99 is not None and p99 < 50
        measured = "never" if p99 is None else f"p99 {p99:.1f} ms"
        if entry["timeouts"]:
            measured += f", {entry['timeouts']}/{entry['trials']} trials not within 2 s"
        add(f"revocation ({label}) seen on instance B within 50 ms", measured, ok)
    return checks


def as_json(results: dict[str, Any], date: str) -> dict[str, Any]:
    document: dict[str, Any] = {"date": date, "machine": results["machine"]}
    for name, entry in results["scenarios"].items():
        document[name] = entry
    scenarios = results["scenarios"]
    document["ratios"] = {
        "api_user_over_healthz": _ratio(scenarios, "api_user", "healthz"),
        "api_user_1m_over_api_user_10k": _ratio(scenarios, "api_user_1m", "api_user_10k"),
        # The same over the runs in which both workers had connections (see README).
        "balanced_runs": {
            "api_user_over_healthz": _balanced_ratio(results, "api_user", "healthz"),
            "api_user_1m_over_api_user_10k": _balanced_ratio(
                results, "api_user_1m", "api_user_10k"
            ),
        },
    }
    workers = results["settings"]["workers"]
    for entry in scenarios.values():
        entry["rps_median_of_balanced_runs"] = balanced_rps(entry, workers)
    login = scenarios.get("login", {})
    document["login_p99_ms"] = login.get("p99_ms")
    document["cert_fetches"] = {
        "total": results["cert_fetches_total"],
        "during_login_scenario": login.get("cert_fetches_during_scenario"),
        "during_login_measured_runs": login.get("cert_fetches_during_measured_runs"),
        "worker_processes_verifying_tokens": results.get("worker_processes_verifying_tokens"),
    }
    for key in ("revocation", "memory", "exit_codes", "logs", "settings", "elapsed_s"):
        document[key] = results.get(key)
    document["targets"] = targets(results)
    return document


def unbalanced(share: float | None, workers: int) -> bool:
    """Whether one worker did clearly more than its part (all of it, typically)."""
    return share is not None and workers > 1 and share > (1 + 1 / workers) / 2


def balanced_rps(entry: dict[str, Any], workers: int) -> float | None:
    """The median rps of the runs whose connections the kernel spread over the workers."""
    shares = entry.get("runs_busiest_worker_share") or [None] * len(entry["runs_rps"])
    rps = sorted(
        value
        for value, share in zip(entry["runs_rps"], shares, strict=True)
        if share is not None and not unbalanced(share, workers)
    )
    return statistics.median(rps) if rps else None


def _balanced_ratio(results: dict[str, Any], top: str, bottom: str) -> float | None:
    scenarios, workers = results["scenarios"], results["settings"]["workers"]
    if top not in scenarios or bottom not in scenarios:
        return None
    high, low = balanced_rps(scenarios[top], workers), balanced_rps(scenarios[bottom], workers)
    return round(high / low, 3) if high and low else None


def _ratio(scenarios: dict[str, Any], top: str, bottom: str) -> float | None:
    if top not in scenarios or bottom not in scenarios or not scenarios[bottom]["rps"]:
        return None
    return round(scenarios[top]["rps"] / scenarios[bottom]["rps"], 3)


def as_markdown(document: dict[str, Any], results: dict[str, Any]) -> str:
    settings = results["settings"]
    machine = results["machine"]
    lines = [
        "# Benchmark: latest run",
        "",
        f"{document['date']}, `make bench` (bench/README.md says what each scenario measures). "
        f"wrk `-t{settings['threads']} -c{settings['connections']}` (login: "
        f"`-c{settings['login_connections']}`), {settings['warmup_s']:g} s warm-up then "
        f"{settings['runs']} runs of {settings['duration_s']:g} s per scenario; the median run "
        f"(by rps) is shown, errors are summed over all runs. The service: `python -m service "
        f"serve`, WORKERS={settings['workers']}, on the same 2 cores as wrk and Postgres, so "
        "compare ratios within this run, not absolute numbers across machines or runs.",
        "",
        "| scenario | what | rps | p50 ms | p99 ms | errors | rps of each run | "
        "other processes' CPU |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    workers = settings["workers"]
    for name, entry in results["scenarios"].items():
        shares = entry.get("runs_busiest_worker_share") or [None] * len(entry["runs_rps"])
        runs = ", ".join(
            f"{rps:,.0f}" + ("†" if unbalanced(share, workers) else "")
            for rps, share in zip(entry["runs_rps"], shares, strict=True)
        )
        others = ", ".join(f"{cpu / entry['duration_s']:.2f}" for cpu in entry["runs_other_cpu_s"])
        lines.append(
            f"| `{name}` | {SCENARIOS.get(name, '')} | {entry['rps']:,.0f} | "
            f"{entry['p50_ms']:.2f} | {entry['p99_ms']:.2f} | {entry['errors']} | {runs} | "
            f"{others} |"
        )
    lines += [
        "",
        "† a run in which one gunicorn worker did most of the work (its share of the workers' "
        "CPU above the midpoint between an even split and all of it): the kernel handed most "
        "of wrk's connections, all opened at once, to one worker. Such runs are slower; they "
        "are kept, and the ratios over the other runs are given below. The last column: cores' "
        "worth of CPU that processes other than the service, Postgres and wrk used during each "
        "run (another job on the machine; 0 on a quiet machine).",
    ]
    ratios = document["ratios"]
    login = results["scenarios"].get("login", {})
    lines += [
        "",
        "## Targets",
        "",
        "| target | this run (median runs) | met | over the runs without † | met |",
        "|---|---|---|---|---|",
    ]
    verdict = {True: "yes", False: "**no**", None: "?"}
    for check in document["targets"]:
        if "measured_without_unbalanced_runs" in check:
            value = check["measured_without_unbalanced_runs"]
            without = f"{_percent(value)} | {verdict[check['met_without']]}"
        else:
            without = "— | —"
        lines.append(
            f"| {check['target']} | {check['measured']} | {verdict[check['met']]} | {without} |"
        )
    lines += [
        "",
        "## Details",
        "",
        f"- api_user / healthz: **{_percent(ratios['api_user_over_healthz'])}**; "
        f"api_user_1m / api_user_10k: **{_percent(ratios['api_user_1m_over_api_user_10k'])}** "
        "(median runs). Over the runs without †: "
        f"{_percent(ratios['balanced_runs']['api_user_over_healthz'])} and "
        f"{_percent(ratios['balanced_runs']['api_user_1m_over_api_user_10k'])}.",
    ]
    if login:
        waits = "; ".join(
            f"{name} {share:.0%}" for name, share in login["postgres_wait_events"].items()
        )
        lines += [
            f"- login: p99 **{login['p99_ms']:.1f} ms** at {login['connections']} connections; "
            f"signing in as {login['distinct_users']} different users in turn; statuses over "
            f"the measured runs: {login['statuses_measured_runs']}; {login['sessions_created']:,} "
            f"sessions created for {login['requests_sent']:,} requests sent (warm-up included; "
            "wrk does not count the requests still in flight when a run stops).",
            f"- certs fetched: **{document['cert_fetches']['total']}** times in the whole bench, "
            f"{login['cert_fetches_during_scenario']} during the login scenario and "
            f"{login['cert_fetches_during_measured_runs']} during its measured runs "
            f"({document['cert_fetches']['worker_processes_verifying_tokens']} worker processes "
            "verify tokens, each with its own cache).",
            f"- Postgres during the login runs: {login['postgres_active_backends_per_sample']} "
            f"active backends on average; what they were doing: {waits}.",
        ]
    for name in ("api_user", "api_user_10k", "api_user_1m"):
        entry = results["scenarios"].get(name)
        if entry and "sessions_rows" in entry:
            size = f" ({entry['sessions_size']})" if "sessions_size" in entry else ""
            lines.append(f"- `{name}`: {entry['sessions_rows']:,} rows in `sessions`{size}.")
    asset = results["scenarios"].get("spa_asset")
    if asset:
        lines.append(f"- spa_asset: `{asset['asset']}`, {asset['asset_bytes']:,} bytes.")
    lines += ["", "## Revocation seen on a second instance", ""]
    lines += [
        f"Instance B runs on the same database. Per trial: sign in on A, `GET /api/me` on B "
        f"(one keep-alive connection, so the polled worker knows the session), revoke, then poll "
        f"`GET /api/user` on B every {settings['poll_interval_ms']:g} ms until the first 401 "
        "(the time includes that request's round trip). SQL: from the moment the statement "
        "deleting the session's row (by id) has committed; logout: from sending "
        "`POST /api/logout` to A.",
        "",
        "| revoked by | trials | p50 ms | p99 ms | max ms | not seen within 2 s | "
        "B round trip p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, label in (("sql", "SQL `DELETE` (committed)"), ("logout", "logout on A")):
        entry = results.get("revocation", {}).get(variant)
        if entry:
            lines.append(
                f"| {label} | {entry['trials']} | {_ms(entry['p50_ms'])} | "
                f"{_ms(entry['p99_ms'])} | {_ms(entry['max_ms'])} | {entry['timeouts']} | "
                f"{_ms(entry['b_round_trip_p50_ms'])} |"
            )
    memory = results.get("memory", {})
    lines += ["", "## Memory after the run (instance A)", ""]
    lines += ["| process | pid | VmRSS MiB | VmHWM MiB |", "|---|---:|---:|---:|"]
    if memory.get("master"):
        lines.append(_memory_row("gunicorn master", memory["master"]))
    for index, worker in enumerate(memory.get("workers", []), 1):
        lines.append(_memory_row(f"worker {index}", worker))
    logs = results.get("logs", {})
    problems = {
        name: f"{entry['problems']} {entry['by_scenario']}" if entry["problems"] else "0"
        for name, entry in logs.items()
    }
    lines += [
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['cores']} cores; memory "
        f"{machine['memory_gib']} GiB; kernel {machine['kernel']}",
        f"- Postgres: {machine.get('postgres', '?')}; Python {machine['python']}; "
        f"{machine['wrk']}; " + ", ".join(f"{k} {v}" for k, v in machine["packages"].items()),
        f"- service at commit {machine['git_commit']}"
        + (
            f" plus uncommitted changes to {len(machine['uncommitted_service_changes'])} "
            "files under service/ and migrations/"
            if machine["uncommitted_service_changes"]
            else ""
        )
        + f"; load average at start {' '.join(machine['load_average_at_start'])}",
        f"- the instances exited with {results.get('exit_codes')} after SIGTERM; warnings and "
        f"errors in their logs: {problems}; the bench took {results['elapsed_s']:.0f} s",
        "",
        "![requests per second per scenario](latest.png)",
        "",
    ]
    return "\n".join(lines)


def _memory_row(label: str, entry: dict[str, Any]) -> str:
    return (
        f"| {label} | {entry.get('pid')} | {entry.get('VmRSS', 0) / 1024:.1f} | "
        f"{entry.get('VmHWM', 0) / 1024:.1f} |"
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def chart(results: dict[str, Any], path: Path, date: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = results["scenarios"]
    names = list(scenarios)[::-1]
    rps = [scenarios[name]["rps"] for name in names]
    low = [rps[i] - min(scenarios[name]["runs_rps"]) for i, name in enumerate(names)]
    high = [max(scenarios[name]["runs_rps"]) - rps[i] for i, name in enumerate(names)]
    figure, axes = plt.subplots(figsize=(9, 4.8), dpi=110)
    colors = ["#d9534f" if scenarios[name]["errors"] else "#4a7ab5" for name in names]
    axes.barh(names, rps, xerr=[low, high], color=colors, capsize=3)
    for index, value in enumerate(rps):
        # Right of the fastest run's whisker, so the two never overlap.
        axes.text(value + high[index], index, f"  {value:,.0f}", va="center", fontsize=9)
    axes.set_xlabel("requests per second (median run; whiskers: slowest and fastest run)")
    machine = results["machine"]
    axes.set_title(
        f"make bench, {date[:16].replace('T', ' ')} UTC: {machine['cores']} cores, "
        f"WORKERS={results['settings']['workers']}",
        fontsize=10,
    )
    axes.set_xlim(0, max(value + extra for value, extra in zip(rps, high, strict=True)) * 1.18)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write(results: dict[str, Any], directory: Path, name: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    document = as_json(results, date)
    markdown = as_markdown(document, results).replace("latest.png", f"{name}.png")
    paths = [directory / f"{name}.md", directory / f"{name}.json", directory / f"{name}.png"]
    paths[0].write_text(markdown)
    paths[1].write_text(json.dumps(document, indent=2, default=str) + "\n")
    chart(results, paths[2], date)
    return paths
