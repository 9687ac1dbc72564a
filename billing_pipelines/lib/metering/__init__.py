"""Usage to Stripe meters: exactly-once planning of meter events and their ledger."""
