"""The browser side of the broker: people sign in here (and, next, the console)."""
