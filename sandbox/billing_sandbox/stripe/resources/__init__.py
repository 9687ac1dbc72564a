"""Resource handlers; importing this package registers every route."""

from . import (  # noqa: F401
    billing,
    catalog,
    customers,
    events,
    meters,
    portal,
    subscriptions,
    test_clocks,
)
