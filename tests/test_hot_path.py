"""The synchronous hot path's kept tensors (issue 14): lazily drawn noise gives the numbers of
the whole-chunk draw, reused scratch tensors change no result, and a round allocates no new
per-edge tensor."""
import pytest
import torch

import p2pmtl.tasks.target_localization as tl
from p2pmtl.bench.common import bench_config
from p2pmtl.bench.main import memory_floor
from p2pmtl.core.ops import Workspace, gather_rows, rowdot, rowdot_into
from p2pmtl.experiments.runner import build_world, make_engine
from p2pmtl.tasks.target_localization import NOISE_CHUNK, NoiseStream

RULES = ["noncoop", "average", "loss", "distance"]


def _calls(block: int):
    """(step, steps wanted) sequences: in order, repeated, backwards, jumping, across chunks."""
    yield [(s, 1) for s in range(70)]
    yield [(s, block) for s in range(0, 70, block)]
    seq = [0, 0, 1, 1, 5, 3, 3, 31, 2, 40, 41, 80, 79, 120, 0, 7, 6, 5, 4, 3, 2, 1]
    yield [(s, 1 + s % block) for s in seq]


@pytest.mark.parametrize("n", [1, 5, 7, 101])
@pytest.mark.parametrize("block", [1, 3, NOISE_CHUNK])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noise_stream_draws_the_numbers_of_whole_chunks(n, block, dtype):
    for calls in _calls(block):
        g_ref, g = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        stream, start, chunk = NoiseStream(n, g, dtype, block), None, None
        for step, k in calls:
            if start is None or step - start >= NOISE_CHUNK or step < start:
                chunk = torch.randn((NOISE_CHUNK, n, 3), generator=g_ref, dtype=dtype)
                stream.new_chunk()
                start = step
            i = step - start
            j = min(NOISE_CHUNK, i + k)
            assert torch.equal(stream.steps(i, j), chunk[i:j]), (step, k)


@pytest.mark.parametrize("n", [1, 7, 101])
@pytest.mark.parametrize("threads", [1, 2])
def test_noise_stream_with_the_threaded_transform_draws_the_same_numbers(n, threads, monkeypatch):
    """From COMPILED_NOISE_MIN_AGENTS agents (lowered here to 1) float64 noise comes from
    uniforms and the Box-Muller transform on the run's threads: still the whole-chunk draw."""
    pytest.importorskip("numba")
    monkeypatch.setattr(tl, "COMPILED_NOISE_MIN_AGENTS", 1)
    from p2pmtl.kernels import normal_draws

    assert normal_draws.matches_torch()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for block in (1, 3, NOISE_CHUNK):
            test_noise_stream_draws_the_numbers_of_whole_chunks(n, block, torch.float64)
            assert NoiseStream(n, torch.Generator(), torch.float64, block)._fill is normal_draws.normal_fill_
    finally:
        torch.set_num_threads(before)
    assert NoiseStream(n, torch.Generator(), torch.float32, 1)._fill is not normal_draws.normal_fill_


def _chunk_data(pop, chunk_eps):
    """The streaming data of a chunk as the whole-chunk code computed it."""
    u = torch.addcmul(pop.unit, pop.s_u, chunk_eps[..., :2])
    d = torch.addcmul(rowdot(pop.diff, u), pop.s_d, chunk_eps[..., 2])
    return u, d, torch.addcmul(pop.x, d.unsqueeze(-1), u), d + rowdot(u, pop.x)


@pytest.mark.parametrize("block_bytes", [1, tl.DATA_BLOCK_BYTES])
def test_target_data_is_the_whole_chunk_data(block_bytes, monkeypatch):
    """Per-step or per-block derivation, two runs batched: bitwise the data of whole chunks."""
    monkeypatch.setattr(tl, "DATA_BLOCK_BYTES", block_bytes)
    cfg = bench_config(60, 6, runs=2)
    world = build_world(cfg, cfg.scenarios[0])
    pop = make_engine(cfg, world, cfg.scenarios[0], ["loss"]).pop
    assert pop._block == (1 if block_bytes == 1 else NOISE_CHUNK)
    gens = [torch.Generator().manual_seed(s["data"]) for s in world.seeds]
    for step in range(2 * NOISE_CHUNK + 5):
        if step % NOISE_CHUNK == 0:
            eps = torch.cat([torch.randn((NOISE_CHUNK, n, 3), generator=g, dtype=pop.dtype)
                             for n, g in zip(pop.sizes, gens)], dim=1)
            ref = _chunk_data(pop, eps)
        pop.sample(step)
        for got, want in zip((pop.u, pop.d, pop.q, pop.c), ref):
            assert torch.equal(got, want[step % NOISE_CHUNK]), step


def _engine(adapt: str, runs: int = 2):
    cfg = bench_config(80, 16, runs=runs)
    cfg.task.adapt = adapt
    world = build_world(cfg, cfg.scenarios[0])
    return make_engine(cfg, world, cfg.scenarios[0], RULES)


@pytest.mark.parametrize("adapt", ["pseudo_observation", "lms"])
def test_engine_with_kept_tensors_equals_engine_with_fresh_ones(adapt):
    """Reused scratch tensors are never read after being rewritten: an engine whose workspaces
    hand out fresh tensors gives bitwise the same models and weights, 4 rules as lanes."""
    kept, fresh = _engine(adapt), _engine(adapt)
    fresh.workspace.reuse = fresh.pop._ws.reuse = False
    for i in range(40):
        kept.step(i)
        fresh.step(i)
        assert torch.equal(kept.pop.theta, fresh.pop.theta), i
        assert torch.equal(kept.weights, fresh.weights), i


def test_engine_round_allocates_no_new_per_edge_tensor():
    eng = _engine("pseudo_observation", runs=1)
    for i in range(3):
        eng.step(i)
    names = dict(eng.workspace._tensors), dict(eng.pop._ws._tensors)
    def ptrs():
        return [t.untyped_storage().data_ptr() for t in (eng.weights, eng.sent, eng.pop.u, eng.pop.c)]

    before = ptrs()
    for i in range(3, 8):
        eng.step(i)
    assert ptrs() == before
    for kept, ws in zip(names, (eng.workspace, eng.pop._ws)):
        assert ws._tensors.keys() == kept.keys()
        assert all(ws._tensors[k] is t for k, t in kept.items())
    # the models alternate between two kept tensors: the last step's stay as they were
    previous = eng.pop.theta
    eng.step(8)
    assert eng.pop.theta is not previous
    assert {id(eng.pop.theta), id(previous)} == {id(eng.pop._ws._tensors[k]) for k in ("theta", "theta'")}


def test_workspace_and_gather_helpers():
    ws = Workspace()
    a = ws.get("a", (3, 2))
    assert ws.get("a", (3, 2)) is a and ws.get("a", (4, 2)) is not a and ws.nbytes == 4 * 2 * 8
    assert Workspace(reuse=False).get("a", (3, 2)) is not Workspace(reuse=False).get("a", (3, 2))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 50, (200,), generator=g)
    for shape, dtype in (((50, 2), torch.float64), ((50, 2), torch.float32), ((50, 3), torch.float64),
                         ((50,), torch.float64)):
        values = torch.randn(shape, generator=g, dtype=dtype)
        out = torch.empty((200, *shape[1:]), dtype=dtype)
        assert gather_rows(values, idx, out) is out and torch.equal(out, values[idx])
    a, b = torch.randn(4, 5, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    out, scratch = torch.empty(4, 5, dtype=torch.float64), torch.empty(4, 5, 2, dtype=torch.float64)
    assert torch.equal(rowdot_into(a, b, out, scratch), rowdot(a, b))


def test_memory_floor_is_positive():
    cfg = bench_config(50, 10)
    world = build_world(cfg, cfg.scenarios[0])
    eng = make_engine(cfg, world, cfg.scenarios[0], ["loss"])
    assert 0 < memory_floor(eng.edges, eng.pop.theta, repeats=2) < 1.0


@pytest.mark.parametrize("network", [None, {"loss": 0.2}])
def test_closed_form_task_runs_under_inference_mode_with_the_same_numbers(tmp_path, monkeypatch, network):
    """A task with ``autograd = False`` (target localization) has its rounds run under
    ``torch.inference_mode()``: the same files as with autograd's bookkeeping on."""
    from conftest import tiny_config_dict

    from p2pmtl.engine.gossip import GossipEngine
    from p2pmtl.experiments.config import load_config
    from p2pmtl.experiments.runner import run_experiment

    modes = []
    step = GossipEngine.step

    def spy(self, *a, **k):
        modes.append(torch.is_inference_mode_enabled())
        return step(self, *a, **k)

    monkeypatch.setattr(GossipEngine, "step", spy)
    data = tiny_config_dict(iterations=12, output={"window": 4})
    if network is not None:
        data["network"] = network
    texts = {}
    for autograd in (True, False):
        monkeypatch.setattr(tl.TargetLocalization, "autograd", autograd)
        modes.clear()
        out = tmp_path / f"autograd_{autograd}"
        run_experiment(load_config(data=data), out_dir=out, progress=False, figures=False)
        assert modes and set(modes) == {not autograd}
        texts[autograd] = [(out / f).read_bytes() for f in ("metrics.csv", "curves.csv")]
    assert texts[True] == texts[False]
