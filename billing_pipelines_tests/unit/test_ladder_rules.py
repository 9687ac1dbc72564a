"""The dunning ladder on ladders of any length, at every rung boundary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_pipelines.lib.dunning.ladder import DEFAULT_LADDER, DunningLadder, LadderStep

# A rung's effect: (api access kept, rate limit multiplier in hundredths).
EFFECTS = st.tuples(st.booleans(), st.sampled_from([100, 75, 50, 25, 10]))


def ladder_of(effects: list[tuple[bool, int]]) -> DunningLadder:
    return DunningLadder(
        steps=tuple(
            LadderStep(
                n,
                f"action{n}",
                f"template{n}",
                rate_limit_multiplier=Decimal(hundredths) / 100,
                api_access_enabled=access,
            )
            for n, (access, hundredths) in enumerate(effects, start=1)
        )
    )


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(effects=st.lists(EFFECTS, min_size=1, max_size=7))
def test_a_ladder_numbered_one_to_n_builds_and_each_rung_is_found_by_number(
    effects: list[tuple[bool, int]],
) -> None:
    ladder = ladder_of(effects)
    size = len(effects)
    assert [ladder.step(n).action for n in range(1, size + 1)] == [
        f"action{n}" for n in range(1, size + 1)
    ]
    assert ladder.last.step == size
    for outside in (0, -1, size + 1, size + 5):
        with pytest.raises(ValueError) as refused:
            ladder.step(outside)
        assert str(refused.value) == f"no ladder step {outside}"


@pytest.mark.parametrize("numbers", [(0, 1), (1, 3), (2, 1), (1, 1), (1, 2, 2), (2,), (0,)])
def test_a_ladder_not_numbered_one_to_n_is_refused(numbers: tuple[int, ...]) -> None:
    with pytest.raises(ValueError) as refused:
        DunningLadder(steps=tuple(LadderStep(n, "a", "t") for n in numbers))
    assert str(refused.value) == f"ladder steps must be 1..n in order, got {list(numbers)}"


def test_a_ladder_without_rungs_is_refused() -> None:
    # It has no last rung: suspension and "Stripe stopped retrying" would have nowhere to go.
    with pytest.raises(ValueError) as refused:
        DunningLadder(steps=())
    assert str(refused.value) == "a dunning ladder needs at least one step"


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    effects=st.lists(EFFECTS, min_size=1, max_size=6),
    level=st.integers(min_value=-3, max_value=10),
)
def test_effects_accumulate_over_the_rungs_reached(
    effects: list[tuple[bool, int]], level: int
) -> None:
    reached = effects[: max(level, 0)]  # a level above the ladder is its last rung
    access = not any(not kept for kept, _ in reached)
    hundredths = sorted([100] + [h for _, h in reached])[0]
    assert ladder_of(effects).effects(level) == (access, Decimal(hundredths) / 100)


def test_no_rung_reached_means_no_effect_even_when_the_first_rung_restricts() -> None:
    ladder = ladder_of([(False, 50), (False, 25)])
    assert ladder.effects(0) == (True, Decimal("1.00"))
    assert ladder.effects(-1) == (True, Decimal("1.00"))
    assert ladder.effects(1) == (False, Decimal("0.50"))


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(size=st.integers(min_value=1, max_value=7), attempts=st.integers(-2, 12))
def test_while_stripe_retries_each_failed_attempt_climbs_one_rung(size: int, attempts: int) -> None:
    ladder = ladder_of([(True, 100)] * size)
    on = 0 if attempts <= 0 else (attempts if attempts <= size else size)
    assert ladder.step_reached(attempts) == on  # retrying is the default
    assert ladder.step_reached(attempts, True) == on
    assert ladder.step_for_attempts(attempts) == on


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(size=st.integers(min_value=1, max_value=7), attempts=st.integers(-2, 12))
def test_when_stripe_stops_retrying_a_failed_invoice_is_on_the_last_rung(
    size: int, attempts: int
) -> None:
    ladder = ladder_of([(True, 100)] * size)
    assert ladder.step_reached(attempts, False) == (size if attempts >= 1 else 0)


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    size=st.integers(min_value=1, max_value=6),
    attempts=st.integers(0, 9),
    done=st.sets(st.integers(1, 6), max_size=4),
    retries=st.booleans(),
)
def test_the_due_rung_is_the_current_one_only_above_every_rung_done(
    size: int, attempts: int, done: set[int], retries: bool
) -> None:
    ladder = ladder_of([(True, 100)] * size)
    if attempts == 0:
        current = 0
    elif not retries:
        current = size
    else:
        current = min(attempts, size)
    highest = max(done) if done else 0
    expected = current if current > highest else None
    # Any iterable of executed rungs, in any order.
    assert ladder.due_step(attempts, sorted(done, reverse=True), retries) == expected
    assert ladder.due_step(attempts, iter(done), retries) == expected


# No deadline: a loaded machine must not fail a property that is right.
@settings(deadline=None)
@given(
    size=st.integers(min_value=1, max_value=6),
    attempts=st.integers(0, 9),
    planned=st.none() | st.integers(0, 10**6),
)
def test_a_suspension_date_is_promised_only_when_the_next_attempt_is_the_last_rung(
    size: int, attempts: int, planned: int | None
) -> None:
    ladder = ladder_of([(True, 100)] * size)
    start = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    next_attempt = None if planned is None else start + timedelta(seconds=planned)
    remaining = size - attempts if attempts < size else 0
    assert ladder.attempts_before_suspension(attempts) == remaining
    expected = next_attempt if remaining == 1 else None
    assert ladder.suspension_date(attempts, next_attempt) == expected


def test_the_default_ladder_steps_are_found_by_number() -> None:
    assert [DEFAULT_LADDER.step(n).template for n in (1, 2, 3, 4)] == [
        "payment_reminder",
        "payment_warning",
        "payment_final_warning",
        "suspended",
    ]
    assert DEFAULT_LADDER.step_reached(7) == 4 and DEFAULT_LADDER.step_reached(2) == 2
