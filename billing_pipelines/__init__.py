"""Turns metered usage into correct Stripe bills, and proves every cent."""
