"""Customer and operator emails: templates, the outbox, delivery."""
