"""Index selection is a pure function of (n, d, budget, intent); tuning stops at the first setting on target."""
import numpy as np
import pytest

from index.select import (
    FLAT_MAX_N,
    IndexSpec,
    estimate_bytes,
    nlist_for,
    parse_bytes,
    recall_at_k,
    select_index,
    spec_for_factory,
    tune_search_params,
)

GB = 10**9


def test_small_catalogue_is_exact_flat():
    spec = select_index(38_111, 128, memory_budget_bytes=4 * GB)
    assert spec.factory == "Flat" and spec.kind == "flat" and spec.search_params == {}
    assert spec.metric == "inner_product"
    assert spec.estimated_bytes == 38_111 * 128 * 4


@pytest.mark.parametrize("n, nlist", [(100_000, 1024), (1_000_000, 4096), (10_000_000, 16384)])
def test_larger_catalogue_gets_ivf_flat_with_power_of_two_lists(n, nlist):
    spec = select_index(n, 128, memory_budget_bytes=64 * GB)
    assert spec.factory == f"IVF{nlist},Flat" and spec.kind == "ivf" and spec.nlist == nlist
    assert "nprobe" in spec.search_params


def test_nlist_follows_four_sqrt_n_and_is_capped():
    assert nlist_for(1_000_000) == 4096                       # 4 * 1000 = 4000 -> 4096
    assert nlist_for(10**12) == 65_536                         # capped
    assert nlist_for(2_000) <= 2_000 // 39                      # enough training points per list
    for n in (60_000, 250_000, 3_000_000):
        nl = nlist_for(n)
        assert nl & (nl - 1) == 0 and 2 * np.sqrt(n) <= nl <= 8 * np.sqrt(n)


def test_low_latency_intent_picks_hnsw_and_exact_intent_flat():
    assert select_index(500_000, 128, memory_budget_bytes=8 * GB, intent="low_latency").factory == "HNSW32,Flat"
    assert select_index(500_000, 128, memory_budget_bytes=8 * GB, intent="exact").factory == "Flat"
    # tiny catalogues stay Flat whatever the intent
    assert select_index(1_000, 128, memory_budget_bytes=8 * GB, intent="low_latency").factory == "Flat"


def test_over_budget_uses_pq_codes_with_rerank():
    n, d = 5_000_000, 128
    assert estimate_bytes("ivf", n, d, nlist=nlist_for(n)) > 1 * GB
    spec = select_index(n, d, memory_budget_bytes=1 * GB)
    assert spec.kind == "ivfpq" and spec.rerank
    assert spec.factory.startswith(f"IVF{nlist_for(n)},PQ") and spec.factory.endswith("x8")
    assert spec.estimated_bytes <= 1 * GB
    # a tighter budget gives fewer bytes per code
    m_big = int(spec.factory.split("PQ")[1].split("x")[0])
    tight = select_index(n, d, memory_budget_bytes=200 * 10**6)
    assert int(tight.factory.split("PQ")[1].split("x")[0]) < m_big


def test_small_catalogue_over_budget_is_compressed_too():
    spec = select_index(FLAT_MAX_N, 128, memory_budget_bytes=10 * 10**6)
    assert spec.kind == "ivfpq"


def test_impossible_budgets_raise_with_the_numbers():
    with pytest.raises(ValueError, match="too small"):
        select_index(5_000_000, 128, memory_budget_bytes=10 * 10**6)
    with pytest.raises(ValueError, match="too few to train"):
        select_index(1_000, 128, memory_budget_bytes=1_000)
    with pytest.raises(ValueError, match="n > 0"):
        select_index(0, 128, memory_budget_bytes=GB)
    with pytest.raises(ValueError, match="intent"):
        select_index(10, 128, memory_budget_bytes=GB, intent="fastest")


def test_forced_factory_is_described():
    assert spec_for_factory("IVF256,Flat", 10_000, 64).kind == "ivf"
    pq = spec_for_factory("IVF256,PQ16x8", 10_000, 64)
    assert pq.kind == "ivfpq" and pq.search_params["rerank_factor"] > 1
    assert spec_for_factory("HNSW32,Flat", 10_000, 64).kind == "hnsw"
    assert spec_for_factory("Flat", 10_000, 64).kind == "flat"


@pytest.mark.parametrize("text, value", [("4GB", 4 * 10**9), ("512MB", 512 * 10**6), ("2GiB", 2 * 2**30),
                                         ("1.5 gb", 1_500_000_000), ("1000", 1000), (123, 123)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_bytes_refuses_garbage():
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")


def test_recall_at_k_ignores_padding():
    I_ref = np.array([[1, 2, 3, -1], [4, 5, 6, 7]])
    neighbours = np.array([[3, 1, 9, 8], [4, 5, -1, -1]])
    assert recall_at_k(neighbours, I_ref, 4) == pytest.approx((2 + 2) / (3 + 4))


def test_tuning_stops_at_first_setting_on_target():
    I_ref = np.arange(20)[None, :].repeat(5, axis=0)

    def search_fn(xq, k, params):          # recall grows with nprobe: 4 of 20 right per doubling
        good = min(20, 4 * int(np.log2(params["nprobe"]) + 1))
        neighbours = np.full((len(xq), k), 10_000)
        neighbours[:, :good] = I_ref[:, :good]
        return neighbours

    spec = IndexSpec("IVF64,Flat", "ivf", {"nprobe": 1}, nlist=64)
    xq = np.zeros((5, 8), np.float32)
    tuning = tune_search_params(search_fn, spec, xq, I_ref, k=20, target_recall=0.98)
    assert tuning.search_params == {"nprobe": 16} and tuning.target_met and tuning.recall == 1.0
    assert [t["params"]["nprobe"] for t in tuning.trials] == [1, 2, 4, 8, 16]
    missed = tune_search_params(lambda xq, k, p: np.full((len(xq), k), -1), spec, xq, I_ref, k=20)
    assert not missed.target_met and missed.recall == 0.0
