"""Secrets generated into the instance directory are never seen half-written."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

from broker.instance_files import read_or_create


def test_the_file_is_created_once_with_mode_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "instance" / "secret-key"
    assert read_or_create(path, lambda: b"first") == b"first"
    assert read_or_create(path, lambda: b"second") == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret-key"]


def test_the_loser_of_a_race_reads_the_winners_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "credential-keys"

    def generate_while_another_process_wins() -> bytes:
        assert not path.exists()  # nothing visible while this one is being made
        read_or_create(path, lambda: b"winner\n")
        return b"loser\n"

    assert read_or_create(path, generate_while_another_process_wins) == b"winner\n"
    assert path.read_bytes() == b"winner\n"
    assert [p.name for p in tmp_path.iterdir()] == ["credential-keys"]


def _read(path: str) -> bytes:
    return read_or_create(Path(path), lambda: multiprocessing.current_process().name.encode())


def test_processes_starting_at_once_all_read_one_complete_secret(tmp_path: Path) -> None:
    path = str(tmp_path / "signing-key.pem")
    with multiprocessing.get_context("fork").Pool(6) as pool:
        seen = pool.map(_read, [path] * 60)
    assert len(set(seen)) == 1 and seen[0]
    assert Path(path).read_bytes() == seen[0]
