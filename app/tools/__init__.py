"""Built-in tools the executor runs itself (function tools go back to the client)."""
