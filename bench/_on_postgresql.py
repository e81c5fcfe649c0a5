"""Run every bench script against PostgreSQL (`make bench-postgresql`).

Starts the throwaway cluster the tests use (`tests/pgcluster.py`: PostgreSQL 15's binaries, a
temporary directory, a free loopback port, durability off), gives each script a new empty
database through `BENCH_DATABASE_URL`, and stops the cluster at the end. Each script prints its
figures as `make bench` does for SQLite. The leading underscore keeps this file out of
`make bench`'s loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pgcluster import PostgresCluster  # noqa: E402  (the project root is on the path now)

BENCH = Path(__file__).resolve().parent


def main() -> int:
    cluster = PostgresCluster()
    cluster.start()
    try:
        for script in sorted(BENCH.glob("[!_]*.py")):
            if script.name == "timing.py":  # shared helpers, not a bench
                continue
            url = cluster.create_database(f"bench_{script.stem}")
            print(f"== {script.relative_to(BENCH.parent)} on PostgreSQL", flush=True)
            done = subprocess.run(
                [sys.executable, str(script)], env={**os.environ, "BENCH_DATABASE_URL": url}
            )
            if done.returncode != 0:
                return done.returncode
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
