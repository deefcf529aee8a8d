"""opengrove: a self-hosted server for the OpenAI Assistants API v2."""
