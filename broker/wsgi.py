"""WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py broker.wsgi:app`."""

from broker import create_app

app = create_app()
