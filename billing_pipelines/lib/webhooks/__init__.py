"""Stripe webhooks: signatures, the queue, and what each event means for a tenant."""
