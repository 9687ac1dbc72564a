"""The Stripe boundary: the only code that talks to Stripe through its SDK."""
