"""The vendored OpenAI OpenAPI spec and the validator the tests check every response with."""
