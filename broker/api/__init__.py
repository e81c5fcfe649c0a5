"""HTTP layer: flask-smorest blueprints. Thin: parse, authorize, call a service, serialize."""
