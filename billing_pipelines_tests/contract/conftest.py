"""Contract tests use the shared `stripe_sandbox` and `stripe_client` fixtures (top conftest)."""
