"""DVC for real: init, add, push to a folder remote, delete everything local, pull it back."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from lightning_modules.data import versioning
from lightning_modules.errors import DataError


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "data" / "a").mkdir(parents=True)
    (root / "data" / "a" / "x.bin").write_bytes(b"\x00\x01" * 500)
    (root / "data" / "b.txt").write_text("hello")
    return root


def test_push_pull_round_trip(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    versioning.init(repo, str(remote))
    before = _tree_digest(repo / "data")
    version = versioning.add(repo)
    assert version.endswith(".dir") and version == versioning.read_data_version(repo / "data.dvc")
    assert versioning.push(repo) >= 2
    assert any(remote.rglob("*")), "the remote folder received the objects"

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    versioning.pull(repo)
    assert _tree_digest(repo / "data") == before
    assert versioning.status(repo)["cloud"] == {}


def test_changed_data_gets_a_new_version(repo: Path, tmp_path: Path) -> None:
    versioning.init(repo, str(tmp_path / "remote"))
    v1 = versioning.add(repo)
    assert versioning.add(repo) == v1, "unchanged data keeps its version"
    (repo / "data" / "b.txt").write_text("changed")
    assert versioning.add(repo) != v1


def test_version_of_missing_and_malformed_files(tmp_path: Path) -> None:
    assert versioning.read_data_version(tmp_path / "none.dvc") is None
    bad = tmp_path / "data.dvc"
    bad.write_text("outs: []\n")
    with pytest.raises(DataError, match="data.dvc.*outs"):
        versioning.read_data_version(bad)


def test_init_outside_git_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path)):
        versioning.init(tmp_path)
