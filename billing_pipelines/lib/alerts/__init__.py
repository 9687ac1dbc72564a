"""Operator alerts: stored once per dedup key, sent to email or chat."""
