"""The versioned index directory: a pointer names the current build, builds are published whole and pruned."""
import threading

import pytest

from index.layout import (
    INFO_FILE,
    POINTER_FILE,
    IndexDirError,
    build_lock,
    current_version,
    list_versions,
    new_version_dir,
    prune,
    publish,
    read_info,
    resolve,
)


def _finish(build, n):
    (build / INFO_FILE).write_text(f'{{"n": {n}}}')
    return build


def test_versions_are_numbered_published_and_resolved(tmp_path):
    root = tmp_path / "idx"
    with build_lock(root):
        first = _finish(new_version_dir(root), 1)
        publish(root, first)
        second = new_version_dir(root)
    assert (first.name, second.name) == ("v000001", "v000002")
    assert resolve(root) == (first, "v000001")          # an unfinished build is never current
    with pytest.raises(IndexDirError, match="refusing to publish"):
        publish(root, second)
    publish(root, _finish(second, 2))
    assert current_version(root) == "v000002" and read_info(root).n == 2
    assert (root / POINTER_FILE).read_text() == "v000002\n"


def test_a_crashed_build_is_cleared_by_the_next_one_and_never_resolved(tmp_path):
    root = tmp_path / "idx"
    publish(root, _finish(new_version_dir(root), 1))
    crashed = new_version_dir(root)
    (crashed / "index.faiss").write_bytes(b"half")
    assert resolve(root)[1] == "v000001"
    nxt = new_version_dir(root)
    assert nxt == crashed and list(nxt.iterdir()) == []     # the same number, emptied


def test_prune_keeps_the_newest_complete_builds_and_always_the_current(tmp_path):
    root = tmp_path / "idx"
    builds = [_finish(new_version_dir(root), i) for i in range(5)]
    publish(root, builds[0])                              # rolled back to the oldest
    assert prune(root, keep=2) == ["v000002", "v000003"]
    assert [b.name for b in list_versions(root)] == ["v000001", "v000004", "v000005"]
    with pytest.raises(ValueError):
        prune(root, keep=0)


def test_one_writer_at_a_time(tmp_path):
    root = tmp_path / "idx"
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold():
        with build_lock(root):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(10)
    try:
        with build_lock(root):
            pass
    except IndexDirError as exc:
        errors.append(str(exc))
    release.set()
    t.join()
    assert errors and "another build or update" in errors[0]


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "not an index directory"),
    (lambda root: (root.mkdir(), (root / POINTER_FILE).write_text("../../etc\n")), "not a build name"),
    (lambda root: (root.mkdir(), (root / POINTER_FILE).write_text("v000007\n")), "names v000007, which is missing"),
    (lambda root: (root.mkdir(), (root / "index.faiss").write_bytes(b"x")), "half built"),
])
def test_broken_directories_are_named(tmp_path, setup, message):
    root = tmp_path / "idx"
    setup(root)
    with pytest.raises(IndexDirError, match=message):
        resolve(root)
