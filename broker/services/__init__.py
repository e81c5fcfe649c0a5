"""Use-cases. They take a session and the caller's identity, never the Flask request."""
