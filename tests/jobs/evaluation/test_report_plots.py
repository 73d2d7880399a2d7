"""Report pictures: the attention figure's rows and ranks, the shared overlay, the methods chart."""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from jobs.evaluation import report_plots
from jobs.evaluation.report_plots import attention_figure, methods_bar_chart, save_figure, spread_of_ranks
from jobs.training.frozen import cached_query_embeddings
from jobs.training.training_data import Readable, cache_features, prepare_data, usable_queries
from pipeline.checkpoint import load_checkpoint
from pipeline.evaluation import category_lookup, per_query_scores
from retrieval.contact_sheet import attention_overlay
from tests.jobs.training.tiny_run import CFG, copy_run


@pytest.fixture(scope="module")
def scored(trained, sample, tmp_path_factory):
    run = copy_run(trained[0], tmp_path_factory.mktemp("plots"))
    embedder = load_checkpoint(run / "checkpoint.pt", with_backbone=False).embedder
    data = prepare_data(sample, run, CFG)
    cache_features(data, run, CFG, "cpu")
    queries = usable_queries(data, data.test_pairs + data.val_pairs, CFG.seed,
                             Readable.from_features(data.scenes, data.products))
    return data, queries, cached_query_embeddings(embedder, data, queries), category_lookup(embedder)


def test_attention_figure_shows_true_ranks_from_best_to_worst(scored, tmp_path, monkeypatch):
    data, queries, emb, lookup = scored
    grids = []

    def overlay(scene, attention, **kw):
        grids.append(attention.shape)
        return attention_overlay(scene, attention, **kw)

    monkeypatch.setattr(report_plots, "attention_overlay", overlay)
    drawn = attention_figure(data.dataset, queries, emb, lookup, tmp_path / "a.png", CFG.exclusion, n_scenes=3)
    ranks = per_query_scores(queries, emb, lookup, methods=("hybrid",))["hybrid"]["rank"]
    assert [rank for _, rank in drawn] == [int(ranks[qi]) for qi, _ in drawn]   # each row's own scene
    assert drawn[0][1] == ranks.min() and drawn[-1][1] == ranks.max()
    assert [r for _, r in drawn] == sorted(r for _, r in drawn)
    assert grids == [(7, 7)] * len(drawn)                                       # the retrieval sheet's overlay
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_spread_of_ranks_runs_from_best_to_worst():
    ranks = [40, 3, 17, 0, 99, 8, 60]
    assert spread_of_ranks(ranks, 3) == [3, 2, 4]     # ranks 0, 17 (the median) and 99
    assert spread_of_ranks(ranks[:2], 4) == [1, 0]    # fewer queries than rows: each once


def test_methods_bar_chart_writes_a_png(tmp_path):
    metrics = {"fitb": 0.5, "fitb_expected": 0.4, "hr@1": 0.1, "hr@10": 0.3, "hr@50": 0.6}
    report = {"methods": {"hybrid": metrics, "backbone": {k: v / 2 for k, v in metrics.items()}}, "n_queries": 9,
              "protocol": {"split": "test", "rank_negatives_mean": 12.0}}
    methods_bar_chart(report, tmp_path / "deep" / "r.png")
    data = (tmp_path / "deep" / "r.png").read_bytes()
    assert data[:4] == b"\x89PNG"
    width, height = np.frombuffer(data[16:24], dtype=">u4")
    assert (width, height) == (880, 440)                 # 8 x 4 inches at 110 dpi


def test_a_plot_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "report.png"
    out.write_bytes(b"the previous plot")
    fig = plt.figure()

    def cut_short(path, **kw):
        Path(path).write_bytes(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", cut_short)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, out, dpi=50)
    assert out.read_bytes() == b"the previous plot" and list(tmp_path.iterdir()) == [out]
    save_figure(plt.figure(), out, dpi=50)
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and list(tmp_path.iterdir()) == [out]
