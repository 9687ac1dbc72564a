"""The Dagster UI in a real browser (Debian's Chromium, driven by Playwright), as the data team
uses it: the lineage, one tenant's audit table, a backfill launched from the UI and run by the
daemon, and a failing check's description. Every step waits on what the page shows, never on a
fixed delay: the webserver and the daemon's runs are slow on a small machine.

Screenshots land in the test's temporary folder; with BILLING_UI_SCREENSHOTS=<folder> (what
`make screenshots` sets) they are also written there, which is how the README's are refreshed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import IO

import dagster as dg
import pytest
from billing_sandbox.services import free_port
from playwright.sync_api import Page, expect, sync_playwright

from billing_pipelines.definitions import defs
from billing_pipelines.lib.stripe import client as stripe_api
from billing_pipelines.lib.usage import warehouse
from billing_pipelines.runs import code_location, materialize_days
from billing_pipelines_tests.integration.reconciliation import support
from billing_pipelines_tests.support import advance

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test` installs it
SCREENSHOTS_ENV = "BILLING_UI_SCREENSHOTS"
# The per-tenant audit table that usage_invoice_audit's materialization carries.
AUDIT_TABLE = "audit_lines"
USAGE_CHECK = "usage_tenants_known"
WAIT_MS = 180_000  # one page or one UI action
BACKFILL_WAIT_MS = 20 * 60_000  # three runs launched by the daemon, each a new process

# True once a node for every given asset is drawn inside the window; a long name may be cut in
# the middle ("stripe_me…_reports").
ALL_NODES_SHOWN = """names => {
  const shown = [...document.querySelectorAll('[class*="AssetNode_assetName"]')]
    .filter(e => { const r = e.getBoundingClientRect();
                   return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight &&
                          r.right <= innerWidth; })
    .map(e => e.innerText.trim());
  const cut = shown.filter(l => l.split("…").length === 2).map(l => l.split("…"));
  return names.every(n => shown.includes(n) ||
    cut.some(([a, b]) => a.length >= 3 && n.startsWith(a) && n.endsWith(b)));
}"""
# True once every node is drawn, or once the drawn nodes (names and places) have not moved for
# `quiet` ms: the graph has settled after loading or zooming, and what it shows is final. A
# zoom is animated and the graph draws what comes into view as it goes, so "not all shown" is
# only an answer once nothing moves any more.
SHOWN_OR_SETTLED = """([names, quiet]) => {
  const all = (ALL_NODES_SHOWN)(names);
  const drawn = JSON.stringify([...document.querySelectorAll('[class*="AssetNode_assetName"]')]
    .map(e => { const r = e.getBoundingClientRect();
                return [e.innerText.trim(), Math.round(r.left), Math.round(r.top)]; }));
  const now = performance.now();
  if (window.__drawnNodes !== drawn) { window.__drawnNodes = drawn; window.__drawnSince = now; }
  return all || now - window.__drawnSince >= quiet;
}""".replace("ALL_NODES_SHOWN", ALL_NODES_SHOWN)
SETTLED_MS = 1500  # far above a zoom's animation, and one frame, on a loaded machine


# `dagster-daemon run`, with the loop of its backfill daemon shortened from Dagster's fixed 30 s
# (`DEFAULT_DAEMON_INTERVAL_SECONDS`, read by that loop each time it starts; no setting exists).
# The test proves the daemon runs a backfill launched from the UI, not Dagster's cadence: at 30 s
# the wait for the backfill's first and last tick moved the test by up to a minute.
BACKFILL_LOOP_SECONDS = 3
DAEMON_WITH_SHORT_LOOP = f"""
import sys
import dagster._daemon.controller as controller
controller.DEFAULT_DAEMON_INTERVAL_SECONDS = {BACKFILL_LOOP_SECONDS}
from dagster._daemon.cli import main
sys.argv[0] = "dagster-daemon"
sys.exit(main())
"""


def _wait_for_http(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start") from None
            time.sleep(0.5)


@pytest.fixture
def dagster_ui(embedded_services: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """dagster-webserver and dagster-daemon on the test session's instance (same DAGSTER_HOME)."""
    bin_dir = Path(sys.executable).parent
    logs: list[IO[bytes]] = []
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{name}.log", "wb")
        logs.append(log)
        process = subprocess.Popen(
            [str(bin_dir / name), *args, "-w", "workspace.yaml"],
            cwd=ROOT,
            env={**os.environ},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        return process

    port = free_port()
    try:
        server = start("dagster-webserver", "-h", "127.0.0.1", "-p", str(port))
        # The real daemon, with its backfill loop every few seconds (see DAEMON_WITH_SHORT_LOOP).
        start("python", "-c", DAEMON_WITH_SHORT_LOOP, "run")
        url = f"http://127.0.0.1:{port}"
        _wait_for_http(f"{url}/server_info", server, "dagster-webserver")
        yield url
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        for log in logs:
            log.close()


class Screenshots:
    """Named screenshots in the test's folder, and in BILLING_UI_SCREENSHOTS when set."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page, self.folder = page, folder
        folder.mkdir(parents=True, exist_ok=True)
        target = os.environ.get(SCREENSHOTS_ENV)
        self.publish = Path(target) if target else None

    def take(self, name: str) -> Path:
        path = self.folder / f"{name}.png"
        self.page.screenshot(path=path)
        assert path.stat().st_size > 10_000, f"{name}: an empty screenshot"
        if self.publish is not None:
            self.publish.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.publish / path.name)
        return path


def _insert_queries(tenant_id: str, day: date, count: int, copies: int = 1) -> None:
    """`count` distinct queries of one tenant on `day`, each logged `copies` times."""
    start, _ = warehouse.day_bounds(day)
    warehouse.connect(os.environ["CLICKHOUSE_URL"]).command(
        """
        INSERT INTO usage_events (event_id, query_id, tenant_id, timestamp, event_type,
            tokens_used, embeddings_count, latency_ms)
        SELECT generateUUIDv4(), concat({tenant:String}, '-q', toString(n)), {tenant:String},
               {start:DateTime64(3, 'UTC')} + toIntervalSecond(n % 80000), 'query', 12, 1, 40
        FROM (SELECT number % {count:UInt64} AS n FROM numbers({rows:UInt64}))
        """,
        parameters={"tenant": tenant_id, "start": start, "count": count, "rows": count * copies},
    )


def _bill_one_tenant(env: dict[str, str], tenant_id: str, day: date, queries: int) -> None:
    """One tenant through the real pipeline on the session's Stripe sandbox, every run on the
    instance the UI reads: usage on `day`, pushed to Stripe, its period closed and invoiced,
    then the reconciliation job (snapshots and the audit)."""
    client = stripe_api.make_client(
        env["STRIPE_API_KEY"], api_base=env["STRIPE_API_BASE"], max_network_retries=0
    )
    support.catalog(client)
    start = int(warehouse.day_bounds(day)[0].timestamp())
    _, subscription, clock = support.tenant(
        client, env["DATABASE_URL"], tenant_id, frozen_time=start
    )
    advance(client, clock, start + 86400 + 1800, timeout=60)  # the day is over
    _insert_queries(tenant_id, day, queries, copies=2)  # cache duplicates: billed once
    assert [ok for _, ok in materialize_days("usage_to_stripe_job", day, day, echo=None)] == [True]
    period_end = client.v1.subscriptions.retrieve(subscription)["items"].data[0].current_period_end
    advance(client, clock, period_end + 2 * 3600, timeout=60)  # invoiced, finalized, paid
    code_location().resolve_job_def("reconciliation_job").execute_in_process(
        instance=dg.DagsterInstance.get(), raise_on_error=False
    )


def _upstream(graph: dg.AssetGraph, key: dg.AssetKey) -> set[str]:
    """Every asset the given one reads, directly or through others (from the loaded graph)."""
    seen: set[dg.AssetKey] = set()
    todo = [key]
    while todo:
        for parent in graph.get(todo.pop()).parent_keys:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return {k.to_user_string() for k in seen}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_data_team_works_in_the_dagster_ui_in_chromium(
    dagster_ui: str, embedded_services: dict[str, str], tmp_path: Path
) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    definitions = defs()
    graph = definitions.resolve_asset_graph()
    usage_asset = definitions.resolve_assets_def("daily_tenant_usage")
    partitions = usage_asset.partitions_def
    (check_description,) = [s.description for s in usage_asset.check_specs if s.name == USAGE_CHECK]
    assert check_description
    assert partitions is not None
    keys = partitions.get_partition_keys()
    # The three newest days for the backfill; older days for the audit and the failing check.
    backfill = keys[-3:]
    audit_day = date.fromisoformat(keys[-7])
    bad_day = date.fromisoformat(keys[-10])
    warehouse.ensure_usage_schema(warehouse.connect(embedded_services["CLICKHOUSE_URL"]))

    tenant_id = f"t-ui-{uuid.uuid4().hex[:6]}"
    # Over the Pro plan's 100,000 included by a multiple of 25: a whole number of cents.
    over = 25 * (40 + uuid.uuid4().int % 400)
    queries = 100_000 + over
    _bill_one_tenant(embedded_services, tenant_id, audit_day, queries)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            # Dagster's first-visit newsletter dialog covers the page; dismiss it whenever it shows.
            community = page.get_by_role("button", name="Skip")
            page.add_locator_handler(community, lambda: community.click())
            shots = Screenshots(page, tmp_path / "screenshots")

            # 1. Lineage: everything upstream of the audit, in one graph, zoomed out until every
            # node is drawn (the graph only renders what is on screen).
            upstream = _upstream(graph, dg.AssetKey("usage_invoice_audit"))
            assert {"usage_events", "daily_tenant_usage", "stripe_meter_reports"} <= upstream
            page.goto(f"{dagster_ui}/assets/usage_invoice_audit?view=lineage")
            page.get_by_role("button", name="Upstream").click()
            page.get_by_role("button", name="All", exact=True).click()
            expect(page.locator('[class*="AssetNode_assetName"]').first).to_be_visible()
            zoom_out = page.locator("button").filter(has=page.locator('[aria-label="zoom_out"]'))
            names = sorted(upstream | {"usage_invoice_audit"})
            # Each step waits for the graph to settle, then zooms out only if a node is missing
            # (no fixed wait per step: the graph's first zoom needs three steps out).
            for zooms in range(5):
                page.evaluate("() => { window.__drawnNodes = null; }")  # settle from now on
                page.wait_for_function(SHOWN_OR_SETTLED, arg=[names, SETTLED_MS], polling=100)
                if zooms == 4 or page.evaluate(ALL_NODES_SHOWN, names):
                    break
                zoom_out.click()
            assert page.evaluate(ALL_NODES_SHOWN, names), "the lineage does not fit on screen"
            shots.take("lineage")

            # 2. One tenant's audit: the five sources, the amounts and the invoice, side by side.
            page.goto(f"{dagster_ui}/assets/usage_invoice_audit")
            expect(page.get_by_text(AUDIT_TABLE, exact=True).first).to_be_visible()
            # The metadata is a table of entries; the audit's own rows are the innermost ones.
            row = page.get_by_role("row").filter(has_text=tenant_id).last
            expect(row).to_be_visible()
            cells = [cell.strip() for cell in row.inner_text().split("\t")]
            # Warehouse, daily usage, ledger, Stripe's meter and the invoice quantity agree.
            assert cells.count(f"{queries:,}") == 5, cells
            assert f"{over:,}" in cells, cells
            # Invoiced and recomputed: Pro's $0.0008 per query over the 100,000 included.
            assert cells.count(f"${over * 8 / 10_000:,.2f}") == 2, cells
            assert "$0.00" in cells and "ok" in cells, cells
            row.scroll_into_view_if_needed()
            shots.take("audit-table")

            # 3. A three-day backfill of daily_tenant_usage launched from the UI, run by the daemon.
            page.goto(f"{dagster_ui}/assets/daily_tenant_usage")
            page.get_by_role("button", name="Materialize…").first.click()
            dialog = page.get_by_role("dialog")
            selection = dialog.get_by_placeholder("No matching partitions")
            selection.fill(f"[{backfill[0]}...{backfill[-1]}]")
            selection.press("Enter")
            expect(dialog.get_by_text("3 partitions", exact=True)).to_be_visible()
            dialog.get_by_role("button", name="Launch backfill").click()
            # The "Created backfill …" toast links to the backfill's page.
            page.locator('a[href*="/runs/b/"]').filter(has_text="View").first.click()
            page.wait_for_url("**/runs/b/**")
            expect(page.get_by_text(f"{backfill[0]}...{backfill[-1]}")).to_be_visible()
            # "0% completed" until the daemon's three runs are done, whatever their outcome.
            expect(page.get_by_text("100% completed")).to_be_visible(timeout=BACKFILL_WAIT_MS)
            asset_link = page.locator('a[href$="/assets/daily_tenant_usage"]').first
            progress = asset_link.locator("xpath=ancestor::div[count(div) >= 5][1]")
            counts = [c.strip() for c in progress.inner_text().splitlines() if c.strip()][-4:]
            # Partitions targeted, in progress, succeeded, failed.
            assert counts == ["3", "0", "3", "0"], progress.inner_text()
            shots.take("backfill")

            # 4. A failing check: usage from a tenant the billing database does not know is held
            # (stored, not billed), so the run succeeds and the WARN check fails, naming it.
            _insert_queries(f"t-stranger-{uuid.uuid4().hex[:4]}", bad_day, 7)
            ran = list(materialize_days("daily_usage_job", bad_day, bad_day, echo=None))
            assert ran == [(bad_day, True)]
            page.goto(f"{dagster_ui}/assets/daily_tenant_usage?view=checks")
            page.get_by_text(USAGE_CHECK, exact=True).first.click()
            expect(page.get_by_text(check_description).first).to_be_visible()
            expect(page.get_by_text("Failed", exact=True).first).to_be_visible()
            expect(page.get_by_text("held_tenants", exact=True).first).to_be_visible()
            shots.take("failing-check")
        finally:
            browser.close()
