"""The Stripe webhook receiver (ASGI): verify the signature, store once by event id, answer 2xx."""

from billing_pipelines.webhooks.app import ReceiverConfig, app_from_environment, create_app

__all__ = ["ReceiverConfig", "app_from_environment", "create_app"]
