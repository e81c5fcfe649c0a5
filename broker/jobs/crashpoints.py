"""Named points where a test can freeze a worker process, to kill it there (SIGKILL).

`BROKER_HANG_AT=<name>` makes the process that reaches that point write the file named by
`BROKER_HANG_MARKER` and then sleep forever: the test waits for the file and kills the process,
exactly where a crash would hurt most. Unset (always, outside those tests), `reach` does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def reach(name: str) -> None:
    if os.environ.get("BROKER_HANG_AT") != name:
        return
    marker = os.environ.get("BROKER_HANG_MARKER")
    if marker:
        Path(marker).write_text(f"{os.getpid()}\n")
    while True:  # until killed
        time.sleep(3600)
