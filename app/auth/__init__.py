"""API keys, projects, and the limits a project works within (rate limits, quotas, models)."""
