"""Resource handlers; importing this package registers every route."""

from . import billing, catalog, customers, events, meters, subscriptions, test_clocks  # noqa: F401
