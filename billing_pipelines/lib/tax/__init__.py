"""Automatic tax: where a customer is for Stripe Tax, and the money math of tax lines."""
