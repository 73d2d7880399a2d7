"""Atomic writes: the target is replaced whole or not at all, with a plain file's permissions; sha256 of a file."""
import hashlib
import os
import stat
from pathlib import Path

import pytest

from common import files
from common.files import atomic_path, sha256_of, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_the_rename_is_the_last_step(tmp_path, monkeypatch):
    target = tmp_path / "deep" / "folder" / "x.txt"     # parents are made
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst), Path(src).read_text()))
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", spy)
    write_text_atomic(target, "hello")
    (src, dst, content), = seen
    assert src.startswith(".x.txt.") and src.endswith(".tmp") and dst == "x.txt" and content == "hello"


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    with open(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "b.bin")


def test_sha256_of_equals_hashlib_on_the_whole_bytes(tmp_path):
    payload = os.urandom(3 * (1 << 20) + 17)          # crosses the 1 MiB read blocks
    (tmp_path / "blob").write_bytes(payload)
    assert sha256_of(tmp_path / "blob") == hashlib.sha256(payload).hexdigest()
