"""WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py broker.wsgi:app`."""

from broker import create_app
from broker.config import require_seller

app = create_app()
require_seller(app.config)
