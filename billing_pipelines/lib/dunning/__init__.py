"""Dunning: the ladder of steps after failed payments, and running one step once."""
