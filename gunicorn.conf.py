"""Production server settings for the broker API (`gunicorn -c gunicorn.conf.py broker.wsgi:app`).

Every value can be overridden from the environment, so the same file serves one laptop and
N stateless API hosts behind a load balancer.
"""

import multiprocessing
import os

from gunicorn import util

from broker.api.problems import write_server_problem

# Requests gunicorn refuses itself (a request line over `limit_request_line`: 414; headers over
# their limits: 431; a malformed request: 400) are answered in problem+json like the app's.
util.write_error = write_server_problem

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count() * 2)))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# In-flight requests get this long to finish on a stop (`broker serve` waits a little more).
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "8"))
keepalive = 5
# Bounded request lines and headers; bodies are capped by the app (1 MiB).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# The app writes one JSON access line per request itself.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Trust X-Forwarded-* only from the proxies named here (comma-separated addresses).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# gunicorn's control socket defaults to one path per user, shared by every instance on the
# host; the broker does not use it.
control_socket_disable = True
# Workers are restarted now and then so slow leaks cannot build up.
max_requests = 10_000
max_requests_jitter = 1_000


def child_exit(_server: object, worker: object) -> None:
    """A worker that exits leaves its live gauges behind in multiprocess mode: drop them."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
