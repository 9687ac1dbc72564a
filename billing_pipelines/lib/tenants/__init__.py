"""Tenants: which ids are accepted, and their access as a function of Stripe and dunning."""
