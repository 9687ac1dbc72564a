"""In-memory state of the sandbox: objects by kind, ids, idempotency keys, events, settings."""

from __future__ import annotations

import copy
import os
import pickle
import random
import string
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import stripe
from sortedcontainers import SortedList

from .due import RANK, DueIndex
from .shapes import build
from .wire import not_found

if TYPE_CHECKING:
    from .webhooks import WebhookDispatcher

API_VERSION: str = stripe.api_version

# id prefix -> kind (the `object` value)
PREFIXES: dict[str, str] = {
    "cus": "customer",
    "prod": "product",
    "price": "price",
    "mtr": "billing.meter",
    "pm": "payment_method",
    "sub": "subscription",
    "si": "subscription_item",
    "in": "invoice",
    "il": "line_item",
    "ii": "invoiceitem",
    "pi": "payment_intent",
    "ch": "charge",
    "clock": "test_helpers.test_clock",
    "evt": "event",
    "we": "webhook_endpoint",
}
KIND_PREFIX = {v: k for k, v in PREFIXES.items()}


@dataclass
class Settings:
    """Behaviour knobs (Stripe Dashboard settings in the real service)."""

    # The account's custom retry schedule (the Dashboard's retry settings): days after the first
    # failed attempt for each automatic retry. Stripe retries "according to your specifications
    # for the number of retries and the maximum duration" and never without a payment method
    # (docs.stripe.com/billing/revenue-recovery/smart-retries); the docs do not pin the day
    # arithmetic of a custom schedule, so the sandbox counts from the first failure.
    retry_schedule_days: list[int] = field(default_factory=lambda: [3, 5, 7])
    # What happens to the subscription when all retries fail: "unpaid" | "canceled" | "past_due".
    subscription_after_retries: str = "unpaid"
    # What happens to the invoice when all retries fail: "open" | "uncollectible".
    invoice_after_retries: str = "open"
    # Seconds between a period end and invoice finalization (Stripe: about 1 hour).
    finalization_grace_seconds: int = 3600
    # Webhook retry backoff (seconds between attempts); Stripe retries for up to 3 days.
    webhook_backoff_seconds: list[float] = field(
        default_factory=lambda: [60.0, 300.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0]
    )
    webhook_timeout_seconds: float = 10.0
    idempotency_ttl_seconds: int = 24 * 3600
    meter_identifier_ttl_seconds: int = 24 * 3600
    incomplete_expiry_seconds: int = 23 * 3600


@dataclass
class Data:
    """Everything that a snapshot persists."""

    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    idempotency: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    meter_events: list[dict[str, Any]] = field(default_factory=list)
    meter_identifiers: dict[str, float] = field(default_factory=dict)
    seq: int = 0


@dataclass
class FaultRates:
    """Share of API requests answered with an injected failure; changeable while serving."""

    throttle: float = 0.0  # 429 rate_limit, nothing done
    before: float = 0.0  # 500 before the work: nothing happened
    after: float = 0.0  # the work is done, then 500: the answer is lost

    @property
    def any(self) -> bool:
        """Whether any fault may be injected."""
        return bool(self.throttle or self.before or self.after)


class SandboxState:
    """The whole emulated Stripe account. All access goes through `lock`."""

    def __init__(self, seed: int = 0, settings: Settings | None = None) -> None:
        self.lock = threading.RLock()
        self.data = Data()
        self.settings = settings or Settings()
        self.rng = random.Random(seed)
        self.time_offset = 0.0  # shifts "real" time (for testing TTLs)
        self.webhooks: WebhookDispatcher | None = None
        self.faults = FaultRates()
        self._by_id: dict[str, str] = {}
        # Per kind, every object's list position (created, insertion number, id), kept sorted
        # so a list page starts at its cursor in O(log n) instead of rebuilding the whole list.
        self._order: dict[str, SortedList] = {}
        self._position: dict[str, tuple[int, int, str]] = {}
        self._inserted = 0
        # The next due lifecycle action of each subscription and invoice (see due.py); `verify`
        # checks every answer against the full scan (the test suite turns it on).
        self.due = DueIndex()
        self.verify_due = os.environ.get("BILLING_SANDBOX_VERIFY_DUE") == "1"

    # ---- time -------------------------------------------------------------------------------
    def real_now(self) -> int:
        return int(time.time() + self.time_offset)

    # ---- ids and objects ----------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        self.data.seq += 1
        alphabet = string.ascii_letters + string.digits
        rnd = "".join(self.rng.choice(alphabet) for _ in range(14))
        return f"{prefix}_{self.data.seq:06d}{rnd}"

    def table(self, kind: str) -> dict[str, dict[str, Any]]:
        return self.data.objects.setdefault(kind, {})

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind = obj["object"]
        self.table(kind)[obj["id"]] = obj
        self._by_id[obj["id"]] = kind
        self._index(kind, obj)
        if kind in RANK:
            self.due.touch(obj["id"])
        return obj

    def _index(self, kind: str, obj: dict[str, Any]) -> None:
        """Give a new object its list position (`created` never changes after creation)."""
        if obj["id"] in self._position:
            return
        self._inserted += 1
        key = (int(obj.get("created") or 0), self._inserted, str(obj["id"]))
        self._position[obj["id"]] = key
        self._order.setdefault(kind, SortedList()).add(key)

    def ordered(self, kind: str) -> SortedList:
        """Positions of every object of `kind`, oldest first: (created, insertion number, id)."""
        return self._order.setdefault(kind, SortedList())

    def position(self, oid: str) -> tuple[int, int, str] | None:
        """An object's list position, or None for an id never stored."""
        return self._position.get(oid)

    def create(self, cls: type, prefix: str, **fields: Any) -> dict[str, Any]:
        oid = fields.pop("id", None) or self.new_id(prefix)
        obj = build(cls, id=oid, **fields)
        if "livemode" in obj:
            obj["livemode"] = False
        return self.put(obj)

    def get(self, kind: str, oid: str, param: str = "id") -> dict[str, Any]:
        obj = self.table(kind).get(oid)
        if kind in RANK:
            self.due.touch(oid)  # fetched to be read or changed: re-read its due work
        if obj is None or obj.get("deleted"):
            raise not_found(
                kind.split(".")[-1].replace("_", " ").replace("test clock", "test clock"),
                oid,
                param,
            )
        return obj

    def find(self, oid: str) -> dict[str, Any] | None:
        kind = self._by_id.get(oid)
        if kind is None:
            prefix = oid.split("_", 1)[0]
            kind = PREFIXES.get(prefix)
        if kind is None:
            return None
        if kind in RANK:
            self.due.touch(oid)
        return self.table(kind).get(oid)

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Newest first, like Stripe lists."""
        return [o for o in reversed(self.table(kind).values()) if not o.get("deleted")]

    # ---- snapshot -----------------------------------------------------------------------------
    def snapshot(self, path: str | Path | None = None) -> bytes:
        with self.lock:
            blob = pickle.dumps((self.data, self.settings))
        if path is not None:
            Path(path).write_bytes(blob)
        return blob

    def restore(self, source: bytes | str | Path) -> None:
        blob = source if isinstance(source, bytes) else Path(source).read_bytes()
        data, settings = pickle.loads(blob)
        with self.lock:
            self.data = data
            self.settings = settings
            self._by_id = {oid: kind for kind, t in data.objects.items() for oid in t}
            self._order, self._position, self._inserted = {}, {}, 0
            self.due.reset()
            for kind, table in data.objects.items():
                for obj in table.values():
                    self._index(kind, obj)

    def copy_of(self, oid: str) -> dict[str, Any]:
        obj = self.find(oid)
        if obj is None:
            raise not_found("object", oid)
        return copy.deepcopy(obj)
