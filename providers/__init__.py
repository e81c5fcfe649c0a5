"""Provider adapter plugins (entry-point group `cloud_broker.providers`).

Adapters never import Flask and never touch the broker's database.
"""
