"""What operators see: request context for logs, Prometheus metrics, log setup."""
