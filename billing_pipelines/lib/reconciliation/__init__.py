"""Reconciliation: Stripe snapshots, the diff against the tenant DB, the usage audit, health."""
