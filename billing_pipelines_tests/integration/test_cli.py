"""The `billing` command: bad input and unreachable servers give one clear line, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from billing_pipelines_tests.cli_process import run_billing


def _run(args: list[str], env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CLICKHOUSE_", "STRIPE_", "DAGSTER_"))
    }
    clean.update({"BILLING_HOME": str(home), **env})
    return run_billing(args, clean)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "mysql://app:hunter2@db/billing"}, "error: DATABASE_URL is invalid"),
        ({"CLICKHOUSE_URL": "clickhouse://app:hunter2@:9000"}, "error: CLICKHOUSE_URL is invalid"),
        (
            {
                "DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/billing",
                "CLICKHOUSE_URL": "http://default@127.0.0.1:1/default",
            },
            "error: DATABASE_URL: cannot connect to postgresql://app:***@127.0.0.1:1/billing",
        ),
    ],
)
def test_bad_settings_are_one_line(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    line = _one_error_line(_run(["db", "migrate"], env, tmp_path))
    assert line.startswith(expected)
    assert "hunter2" not in line


def test_unreachable_warehouse_is_one_line(
    embedded_services: dict[str, str], tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": embedded_services["DATABASE_URL"],
        "CLICKHOUSE_URL": "http://default:hunter2@127.0.0.1:1/default",
        "STRIPE_API_KEY": "sk_test_x",
    }
    # `usage generate` refuses any non-sandbox address before connecting; doctor connects.
    result = _run(["doctor"], env, tmp_path)
    line = _one_error_line(result)
    assert line.startswith("error: CLICKHOUSE_URL: cannot reach http://default:***@127.0.0.1:1")


def test_missing_stripe_key_outside_the_sandbox_is_named(
    embedded_services: dict[str, str], tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": embedded_services["DATABASE_URL"],
        "CLICKHOUSE_URL": embedded_services["CLICKHOUSE_URL"],
        # Outside the sandbox, with mail and Dagster configured: the key is the only gap.
        "BILLING_SANDBOX": "",
        "SMTP_URL": f"file://{tmp_path / 'mail'}",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    result = _run(["doctor"], env, tmp_path)
    line = _one_error_line(result)
    assert line.startswith("error: STRIPE_API_KEY is not set (requests would go to api.stripe.com)")
    assert "ok    billing database" in result.stdout
    assert "ok    usage warehouse" in result.stdout


def test_bad_date_is_a_clear_error(embedded_services: dict[str, str], tmp_path: Path) -> None:
    env = {k: embedded_services[k] for k in ("DATABASE_URL", "CLICKHOUSE_URL")}
    line = _one_error_line(_run(["usage", "materialize", "--start", "2026-13-01"], env, tmp_path))
    assert line == "error: --start must be a date as YYYY-MM-DD, got '2026-13-01'"


def test_sandbox_status_shows_running_services(
    embedded_services: dict[str, str], billing_home: Path
) -> None:
    result = _run(["sandbox", "status"], {}, billing_home)
    assert result.returncode == 0, result.stderr
    status = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert status["postgres"].startswith("running  postgresql://")
    assert status["clickhouse"].startswith("running  http://127.0.0.1:")


def test_migrate_is_idempotent_from_the_cli(
    embedded_services: dict[str, str], tmp_path: Path
) -> None:
    env = {k: embedded_services[k] for k in ("DATABASE_URL", "CLICKHOUSE_URL")}
    result = _run(["db", "migrate"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("up to date at ")


def test_unset_warehouse_url_starts_only_the_embedded_bridge(
    embedded_services: dict[str, str], tmp_path: Path
) -> None:
    # The sandbox switch is on (the test session sets it): only unset URLs are stood in for.
    env = {"DATABASE_URL": embedded_services["DATABASE_URL"], "STRIPE_API_KEY": "sk_test_x"}
    try:
        result = _run(["db", "migrate"], env, tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("up to date at ")
        status = dict(
            line.split(None, 1)
            for line in _run(["sandbox", "status"], {}, tmp_path).stdout.splitlines()
        )
        assert status["clickhouse"].startswith("running")
        # DATABASE_URL was given and a Stripe key is set: no embedded Postgres or Stripe sandbox.
        assert status["postgres"] == "stopped"
        assert status["stripe"] == "stopped"
    finally:
        _run(["sandbox", "down"], {}, tmp_path)


def test_usage_push_rejects_a_bad_date(embedded_services: dict[str, str], tmp_path: Path) -> None:
    # With the URLs set nothing is started in tmp_path (an unset URL would start and leave
    # embedded services running there).
    env = {k: embedded_services[k] for k in ("DATABASE_URL", "CLICKHOUSE_URL")}
    line = _one_error_line(_run(["usage", "push", "--date", "2026-02-30"], env, tmp_path))
    assert line == "error: --date must be a date as YYYY-MM-DD, got '2026-02-30'"


def test_catalog_sync_then_usage_push_from_the_shell(
    embedded_services: dict[str, str], fresh_database_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    from billing_pipelines.lib.usage import warehouse

    client = warehouse.connect(embedded_services["CLICKHOUSE_URL"])
    warehouse.ensure_usage_schema(client)
    warehouse.clear_usage_events(client)  # no other test's tenants on this day
    day = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    # A billing database of the test's own: the push's totals check reads every billable
    # tenant's pushed days in its window, and no other module's tenants belong in it.
    env = {**embedded_services, "DATABASE_URL": fresh_database_url}
    synced = _run(["catalog", "sync"], env, tmp_path)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "in sync with plans.toml" in synced.stdout
    pushed = _run(["usage", "push", "--date", day], env, tmp_path)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert f"usage_to_stripe_job {day}: ok" in pushed.stdout


@pytest.mark.parametrize(
    "start", ["2026-10-01 14:30", "2026-10-01T14:30:00+02:00", "tomorrow", "2026-02-30T00:00Z"]
)
def test_demo_start_that_is_not_a_utc_instant_is_one_line_before_starting_anything(
    start: str, tmp_path: Path
) -> None:
    line = _one_error_line(_run(["demo", "--start", start], {}, tmp_path))
    assert line == (
        f"error: --start {start!r} is not an ISO 8601 instant in UTC (for example "
        "2026-10-01T14:30:00Z)"
    )
    assert not (tmp_path / "postgres").exists()  # nothing was started


@pytest.mark.parametrize("limits", ["production", "LIVE", ""])
def test_demo_stripe_limits_other_than_test_or_live_is_one_line_before_starting_anything(
    limits: str, tmp_path: Path
) -> None:
    line = _one_error_line(_run(["demo", "--stripe-limits", limits], {}, tmp_path))
    assert line == f"error: --stripe-limits {limits!r} is not test or live"
    assert not (tmp_path / "postgres").exists()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--help"], {}),
        (["db", "migrate"], {"DATABASE_URL": "mysql://app:hunter2@db/billing"}),
        (["tenant", "create", "--tenant", "a;b", "--plan", "pro", "--email", "a@b.test"], {}),
    ],
)
def test_the_forked_command_answers_as_the_installed_script_does(
    args: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    """The suite's `billing` runs are forks of a process that imported it; same answers."""
    installed = str(Path(sys.executable).with_name("billing"))
    clean = {**os.environ, "BILLING_HOME": str(tmp_path), **env}
    real = subprocess.run(
        [installed, *args], env=clean, capture_output=True, text=True, timeout=120
    )
    forked = run_billing(args, clean)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        real.returncode,
        real.stdout,
        real.stderr,
    )
    assert real.stdout or real.stderr


def test_a_forked_command_reads_the_first_partition_day_from_its_own_environment(
    embedded_services: dict[str, str], tmp_path: Path
) -> None:
    """The partitions are built when the code location is imported, under the call's settings."""
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("")
    for start in ("2026-09-14", "2025-12-31"):
        env = {
            **os.environ,
            **embedded_services,
            "BILLING_SANDBOX": "",
            "BILLING_HOME": str(tmp_path),
            "DAGSTER_HOME": str(tmp_path / "dagster"),
            "USAGE_START_DATE": start,
        }
        result = run_billing(["usage", "materialize", "--start", "2020-01-01"], env)
        line = _one_error_line(result)
        assert line.startswith(f"error: no partition for 2020-01-01: days run from {start} ")


def _first_customer_of_a_fresh_emulator(seed: list[str]) -> str:
    """Start `billing sandbox stripe`, create one customer, stop it; the customer's id."""
    from billing_sandbox.ports import free_port

    port = free_port()
    installed = str(Path(sys.executable).with_name("billing"))
    server = subprocess.Popen(
        [installed, "sandbox", "stripe", "--port", str(port), *seed],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers: it is up
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        request = urllib.request.Request(
            f"{url}/v1/customers",
            data=b"email=a%40b.test",
            headers={"Authorization": "Bearer sk_test_restart"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(json.load(answer)["id"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_restarted_stripe_emulator_never_repeats_an_id_unless_seeded() -> None:
    """The billing database outlives the in-memory emulator: a restart must not reuse its ids."""
    restarts = {_first_customer_of_a_fresh_emulator([]) for _ in range(2)}
    assert len(restarts) == 2
    seeded = {_first_customer_of_a_fresh_emulator(["--seed", "7"]) for _ in range(2)}
    assert len(seeded) == 1
