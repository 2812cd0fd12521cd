"""User-facing front ends on top of the client API: the chat CLI and the OpenAI-compatible API."""
