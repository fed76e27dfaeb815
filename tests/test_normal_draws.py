"""torch's float64 normal draws with the Box-Muller transform on several threads
(p2pmtl.kernels.normal_draws): the same numbers and generator state as ``normal_``, a fall-back
to torch wherever the shortcut does not apply or does not match."""
import pytest
import torch

pytest.importorskip("numba")

from p2pmtl.kernels import normal_draws  # noqa: E402


@pytest.mark.parametrize("size", [16, 4096, 1 << 17, 3 * 100_003 // 16 * 16])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_fill_is_normal_bit_for_bit(size, threads):
    assert normal_draws.matches_torch()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed in (0, 7):
            g_want, g_got = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            want = torch.empty(size, dtype=torch.float64).normal_(generator=g_want)
            got = normal_draws.normal_fill_(torch.empty(size, dtype=torch.float64), g_got)
            assert torch.equal(want, got)
            assert torch.equal(g_want.get_state(), g_got.get_state())
            assert torch.equal(want.normal_(generator=g_want), got.normal_(generator=g_got))  # and what follows
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before


def test_the_transform_is_atens_box_muller_by_hand():
    """One block of 16 by the formula: u1 = 1 - x[j], u2 = x[j + 8], r = sqrt(-2 log u1),
    x[j] = r cos(2 pi u2), x[j + 8] = r sin(2 pi u2)."""
    import math

    u = torch.linspace(0.01, 0.97, 16, dtype=torch.float64)
    x = u.clone().numpy()
    normal_draws.box_muller_blocks(x, 1)
    for j in range(8):
        r = math.sqrt(-2.0 * math.log(1.0 - u[j].item()))
        theta = 2.0 * math.pi * u[j + 8].item()
        assert x[j] == r * math.cos(theta) and x[j + 8] == r * math.sin(theta)


@pytest.mark.parametrize("make", [
    lambda: torch.empty(100, dtype=torch.float64),  # not a multiple of 16
    lambda: torch.empty(64, dtype=torch.float32),  # float32: torch's vectorized transform
    lambda: torch.empty(64, 2, dtype=torch.float64)[:, 0],  # not contiguous
])
def test_other_tensors_are_left_to_torch(make):
    g_want, g_got = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    want, got = make(), make()
    want.normal_(generator=g_want)
    assert torch.equal(normal_draws.normal_fill_(got, g_got), want)
    assert torch.equal(g_want.get_state(), g_got.get_state())


def test_a_transform_that_does_not_match_is_not_used(monkeypatch):
    """The once-per-process check: were torch's numbers to differ (another torch), the fill
    falls back to torch's own normal_."""
    real = normal_draws.box_muller_blocks

    def off_by_a_little(x, parts):
        real(x, parts)
        x[0] = x[0] + 1.0

    monkeypatch.setattr(normal_draws, "box_muller_blocks", off_by_a_little)
    normal_draws.matches_torch.cache_clear()
    try:
        assert not normal_draws.matches_torch()
        g_want, g_got = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
        want = torch.empty(4096, dtype=torch.float64).normal_(generator=g_want)
        assert torch.equal(normal_draws.normal_fill_(torch.empty(4096, dtype=torch.float64), g_got), want)
    finally:
        monkeypatch.setattr(normal_draws, "box_muller_blocks", real)
        normal_draws.matches_torch.cache_clear()
    assert normal_draws.matches_torch()


def test_the_bench_times_both_ways_on_the_same_numbers():
    from p2pmtl.bench.main import noise_draw_times

    r = noise_draw_times(20_000, threads=2, repeats=2)
    assert r["same"] and r["normal_ms"] > 0 and r["threaded_ms"] > 0 and r["agents"] == 20_000
