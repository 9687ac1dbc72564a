"""The dunning ladder as data: what happens after the 1st, 2nd, 3rd and 4th failed payment.

The ladder: attempt 1 reminder; 2 warning with a suspension date; 3 final warning and rate
limit x 0.5 (soft suspension); 4+ suspend API access; any successful payment reactivates and
resets. Effects are cumulative: the tenant's restriction is that of the highest step executed
on any of its open (unpaid, not void) invoices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class LadderStep:
    """One rung: the failed-attempt count that triggers it, its email and its access effect."""

    step: int
    action: str
    template: str
    rate_limit_multiplier: Decimal = Decimal("1.00")
    api_access_enabled: bool = True
    # Step 2 announces when access will be suspended if nothing changes.
    announces_suspension: bool = False


@dataclass(frozen=True)
class DunningLadder:
    """The ordered rungs and when suspension happens relative to the first failure."""

    steps: tuple[LadderStep, ...]

    def __post_init__(self) -> None:
        numbers = [s.step for s in self.steps]
        if not numbers:
            # With no last rung, suspension (and "Stripe stopped retrying") has nowhere to go.
            raise ValueError("a dunning ladder needs at least one step")
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"ladder steps must be 1..n in order, got {numbers}")

    @property
    def last(self) -> LadderStep:
        """The final rung (suspension); every later failure stays on it."""
        return self.steps[-1]

    def step(self, number: int) -> LadderStep:
        """The rung by number (1-based)."""
        if not 1 <= number <= len(self.steps):
            raise ValueError(f"no ladder step {number}")
        return self.steps[number - 1]

    def step_for_attempts(self, attempt_count: int) -> int:
        """The rung an invoice with this many failed attempts is on (0 = none yet)."""
        return max(0, min(attempt_count, len(self.steps)))

    def step_reached(self, attempt_count: int, stripe_retries: bool = True) -> int:
        """The rung an unpaid invoice is on: one per failed attempt while Stripe keeps retrying.

        When Stripe has stopped retrying (its retry settings are used up, there is no payment
        method, or a resume that never retries) no further attempt will come to climb on, so
        the invoice is on the last rung at once: the ladder follows the account's retries,
        whatever their number, instead of waiting for attempts that will not happen.
        """
        if attempt_count > 0 and not stripe_retries:
            return len(self.steps)
        return self.step_for_attempts(attempt_count)

    def due_step(
        self, attempt_count: int, executed: Iterable[int], stripe_retries: bool = True
    ) -> int | None:
        """The next rung to run, or None. Missed rungs are not replayed: we jump to the current
        one (three emails at once would help nobody), and never go back down."""
        current = self.step_reached(attempt_count, stripe_retries)
        done = max(executed, default=0)
        return current if current > done else None

    def effects(self, level: int) -> tuple[bool, Decimal]:
        """(api_access_enabled, rate_limit_multiplier) for the highest rung reached."""
        access, multiplier = True, Decimal("1.00")
        for rung in self.steps[: max(0, min(level, len(self.steps)))]:
            access = access and rung.api_access_enabled
            multiplier = min(multiplier, rung.rate_limit_multiplier)
        return access, multiplier

    def attempts_before_suspension(self, attempt_count: int) -> int:
        """How many more failed attempts reach the last rung (0: it is reached)."""
        return max(0, self.last.step - attempt_count)

    def suspension_date(
        self, attempt_count: int, next_payment_attempt: datetime | None
    ) -> datetime | None:
        """When access is suspended if nothing is paid, as far as Stripe has decided it.

        Stripe times retries from the account's settings (Smart Retries or a custom schedule)
        and publishes only the next one, `next_payment_attempt`; it does not retry at all
        without a payment method. So the date is known when the next attempt is the one that
        reaches the last rung, and unknown (None) when more attempts come first or none is
        planned: the ladder never assumes a day schedule of its own.
        """
        if next_payment_attempt is None or self.attempts_before_suspension(attempt_count) != 1:
            return None
        return next_payment_attempt


DEFAULT_LADDER = DunningLadder(
    steps=(
        LadderStep(1, "reminder", "payment_reminder"),
        LadderStep(2, "warning", "payment_warning", announces_suspension=True),
        LadderStep(
            3, "final_warning", "payment_final_warning", rate_limit_multiplier=Decimal("0.50")
        ),
        LadderStep(
            4,
            "suspend",
            "suspended",
            rate_limit_multiplier=Decimal("0.50"),
            api_access_enabled=False,
        ),
    )
)
