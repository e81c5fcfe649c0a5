"""Run every bench script against PostgreSQL (`make bench-postgresql`).

Starts the throwaway cluster the tests use (`tests/pgcluster.py`: PostgreSQL 15's binaries, a
temporary directory, a free loopback port, durability off), gives each script a new empty
database through `BENCH_DATABASE_URL`, and stops the cluster at the end. Each script prints its
figures as `make bench` does for SQLite. The leading underscore keeps this file out of
`make bench`'s loop. Names given as arguments run those scripts only
(`.venv/bin/python bench/_on_postgresql.py orders billing`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pgcluster import PostgresCluster  # noqa: E402  (the project root is on the path now)

BENCH = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    scripts = [BENCH / f"{name.removesuffix('.py')}.py" for name in names] or sorted(
        BENCH.glob("[!_]*.py")
    )
    cluster = PostgresCluster()
    cluster.start()
    try:
        for script in scripts:
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
    sys.exit(main(sys.argv[1:]))
