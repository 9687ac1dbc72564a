"""Usage to Stripe: catalog sync, exactly-once meter reports, checks and schedules."""
