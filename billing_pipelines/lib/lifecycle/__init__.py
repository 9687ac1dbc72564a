"""Subscription lifecycle actions: onboard, change plan, cancel, cards, reactivate, portal."""
