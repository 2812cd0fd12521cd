import pytest
import torch

from swarmnode.errors import CacheExhausted, InvalidRequest, UnknownSession
from swarmnode.server.cache import CacheManager, SessionCache


def manager(budget=1000):
    return CacheManager(budget, max_session_length=512, kv_heads=2, head_dim=4, dtype=torch.float32, device="cpu")


def test_sessions_are_admitted_within_the_budget_and_freed_on_close():
    m = manager(1000)
    m.open("a", 0, 2, batch=1, max_length=300)  # 600 block-tokens
    with pytest.raises(CacheExhausted) as full:
        m.open("b", 0, 2, batch=1, max_length=300)
    assert full.value.retryable  # room comes back when "a" ends
    with pytest.raises(CacheExhausted) as never:
        m.open("c", 0, 4, batch=1, max_length=500)  # 2,000 block-tokens: above the whole budget
    assert not never.value.retryable
    m.close("a")
    assert m.used == 0
    m.open("b", 0, 2, batch=1, max_length=300)
    assert m.active_sessions == 1


def test_bad_session_requests():
    m = manager()
    with pytest.raises(InvalidRequest):
        m.open("a", 0, 1, batch=1, max_length=10_000)
    with pytest.raises(UnknownSession):
        m.get("nope")
    m.open("a", 0, 1, 1, 10)
    with pytest.raises(InvalidRequest, match="already open"):
        m.open("a", 0, 1, 1, 10)


def test_session_cache_appends_and_rolls_back():
    cache = SessionCache(4, 6, batch=1, max_length=8, kv_heads=2, head_dim=3, dtype=torch.float32, device="cpu")
    k = torch.ones(1, 2, 3, 3)
    keys, values = cache.update(k, 2 * k, layer_idx=5)
    assert keys.shape == (1, 2, 3, 3) and torch.equal(values, 2 * k)
    cache.commit(3)
    keys, _ = cache.update(torch.zeros(1, 2, 1, 3), torch.zeros(1, 2, 1, 3), layer_idx=4)
    assert keys.shape[2] == 4 and cache.keys[0, :, :, :3].sum() == 0  # layer 4 untouched before
    cache.commit(1)
    cache.rollback(2)
    assert cache.get_seq_length() == 2


def test_each_open_sessions_time_away_is_listed_for_admission():
    m = manager(1000)
    a, b = m.open("a", 0, 1, 1, 10), m.open("b", 0, 1, 1, 10)
    assert m.away_s(1.0) == (None, None)  # neither measured yet
    a.returns.answered(0.0)
    a.returns.arrived(0.3)
    a.returns.answered(0.31)
    assert m.away_s(0.4) == (pytest.approx(0.3), None)
    m.close("b")
    assert len(m.away_s(0.4)) == 1 and b.returns.away_s(0.4) is None
