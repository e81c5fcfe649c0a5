"""Metering, rating, invoicing and settlements: pure domain code, no Flask."""
