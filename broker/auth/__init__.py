"""Authentication: OAuth 2.0 client credentials, RFC 9068 access tokens, callers."""
