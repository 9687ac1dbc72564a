"""Monitoring: billing state (queues, payments, dunning, meter pushes) as Prometheus metrics."""
