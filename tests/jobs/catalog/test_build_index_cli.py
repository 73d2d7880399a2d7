"""`ctl build-index` through click's CliRunner: a summary on success, one readable line on user errors."""
from click.testing import CliRunner

from index.layout import read_info
from index.store import ProductIndex
from jobs.catalog.build_index import build_index_command
from jobs.cli import main


def test_cli_builds_and_prints_a_summary(make_catalogue, tmp_path):
    emb_dir, _, cats = make_catalogue(1200, 16)
    out = tmp_path / "idx"
    result = CliRunner().invoke(build_index_command, ["--embeddings", str(emb_dir), "--out", str(out),
                                                      "--memory-budget", "1GB", "--target-recall", "0.95"])
    assert result.exit_code == 0, result.output
    assert "n=1200" in result.output and "factory=Flat" in result.output and "recall@20=1.0000" in result.output
    assert f"shoes={int((cats == 'shoes').sum())}" in result.output
    info = read_info(out)
    assert info.memory.budget_bytes == 10**9 and info.recall.target == 0.95
    assert ProductIndex.load(out).n == 1200


def test_cli_forced_factory(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(2000, 16)
    result = CliRunner().invoke(build_index_command, ["--embeddings", str(emb_dir), "--out", str(tmp_path / "idx"),
                                                      "--factory", "IVF16,Flat"])
    assert result.exit_code == 0, result.output
    assert "factory=IVF16,Flat" in result.output and "nprobe" in result.output


def test_cli_incomplete_manifest_is_one_readable_line(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(100, 8, complete=False)
    result = CliRunner().invoke(build_index_command, ["--embeddings", str(emb_dir), "--out", str(tmp_path / "idx")])
    assert result.exit_code == 1
    assert result.stderr.startswith("build-index: error:") and "complete=false" in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_cli_missing_folder_and_bad_budget(tmp_path):
    result = CliRunner().invoke(build_index_command, ["--embeddings", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(build_index_command, ["--embeddings", str(tmp_path), "--memory-budget", "lots"])
    assert result.exit_code == 2 and "memory size" in result.output


def test_registered_in_ctl(make_catalogue, tmp_path):
    emb_dir, _, _ = make_catalogue(300, 8)
    result = CliRunner().invoke(main, ["build-index", "--embeddings", str(emb_dir), "--out", str(tmp_path / "idx")])
    assert result.exit_code == 0, result.output
    assert read_info(tmp_path / "idx").n == 300
