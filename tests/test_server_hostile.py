"""Server mode under hostile uploads (both harnesses: CNN clients in p2pmtl.server.federated, linear
tasks in p2pmtl.server.linear): uploads with NaN or inf are dropped before any pre-aggregation
step or aggregator and counted; a round with too few uploads keeps the model and is counted;
every other aggregator error propagates."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from p2pmtl.engine.world import run_seeds
from p2pmtl.experiments.config import load_config
from p2pmtl.experiments.runner import run_experiment
from p2pmtl.robust.aggregators import Krum, NearestNeighborMixing
from p2pmtl.robust.attacks import ATTACKS, Attack, AttackContext
from p2pmtl.server.aggregation import build_aggregator
from p2pmtl.server.federated import Clients, FederatedRun, Method, enough_uploads, finite_uploads, upload_shortfall
from p2pmtl.server.linear import LinearServer

NAN, INF = float("nan"), float("inf")
HOSTILE = {"nan": [NAN], "inf": [INF], "-inf": [-INF], "mixed": [NAN, INF, 1e308], "huge": [1e308]}
NONFINITE = {"nan": 2, "inf": 2, "-inf": 2, "mixed": 2, "huge": 0}  # of 2 Byzantine uploads (float64)
ROBUST = ["gm", "krum", "multi_krum", "trimmed_mean", "coordinate_median"]


class HostileValues(Attack):
    """Byzantine upload b = values[b % len(values)] in every coordinate."""

    def __init__(self, *, values: list = (NAN,)) -> None:
        self.values = [float(v) for v in values]

    def forge(self, ctx: AttackContext) -> torch.Tensor:
        b, d = len(ctx.byzantine), ctx.honest.shape[1]
        vals = torch.tensor([self.values[i % len(self.values)] for i in range(b)], dtype=torch.float64)
        return vals[:, None].expand(b, d).to(ctx.honest.dtype).clone()


@pytest.fixture(scope="module")
def hostile_attack():
    """Registered only while this module's tests need it (other tests list every attack)."""
    ATTACKS.register("server_hostile", "test only: Byzantine clients upload one given value everywhere")(
        HostileValues)
    yield "server_hostile"
    ATTACKS.unregister("server_hostile")


# --------------------------------------------------------------------------- helpers


def test_finite_uploads_and_shortfall_helpers():
    up = torch.zeros(5, 3, dtype=torch.float64)
    up[1, 2], up[3, 0], up[4] = NAN, -INF, 1e308
    kept, dropped = finite_uploads(up)
    assert dropped == 2 and torch.equal(kept, up[[0, 2, 4]])  # 1e308 is finite: kept
    same, none = finite_uploads(up[[0, 2]])
    assert none == 0 and same.shape == (2, 3)

    assert upload_shortfall(lambda x: x.mean(0), 1) is None  # a plain callable needs one upload
    assert upload_shortfall(lambda x: x.mean(0), 0) == "no upload to aggregate"
    server = load_config(data=_linear_dict(["fedavg+krum"], f=2, pre=["nnm"])).server
    agg = build_aggregator(Method.parse("fedavg+krum"), server, [2], [2])
    assert agg.name == "nnm+krum"
    assert "2f + 3" in upload_shortfall(agg, 6) and not enough_uploads(agg, 6)
    assert enough_uploads(agg, 7)


# --------------------------------------------------------------------------- linear harness


def _linear_dict(methods, byzantine=2, f=2, clients=10, **server) -> dict:
    return {"name": "tl_hostile", "mode": "server", "iterations": 3, "graph": {"family": "star", "n": clients + 1},
            "server": {"methods": methods, "alpha": 1.0, "f": f, **server},
            "output": {"window": 2, "figures": False},
            "scenarios": [{"name": "attacked", "byzantine": byzantine, "attack": {"name": "uniform"}}]}


def _linear(methods, values, rounds=3, **kw) -> LinearServer:
    cfg = load_config(data=_linear_dict(methods, **kw))
    srv = LinearServer(cfg, cfg.scenarios[0], methods, run_seeds(0))
    srv.attacks = [HostileValues(values=values) for _ in methods]
    for t in range(rounds):
        srv.round(t)
    return srv


def _lane_models(srv: LinearServer) -> torch.Tensor:
    return srv.pop.theta.view(srv.m, srv.n, -1)[:, 0]


@pytest.mark.parametrize("kind", list(HOSTILE))
@pytest.mark.parametrize("pre", [[], ["nnm"]])
def test_linear_server_drops_nonfinite_uploads(kind, pre):
    """10 clients, 2 Byzantine, f = 2, 3 rounds: every robust aggregator (with and without a
    pre-aggregation step) keeps finite models; the dropped uploads are counted per lane."""
    methods = [f"fedavg+{a}" for a in ROBUST]
    srv = _linear(methods, HOSTILE[kind], pre=pre)
    models = _lane_models(srv)
    finite = {m: bool(torch.isfinite(models[j]).all()) for j, m in enumerate(methods)}
    if kind == "huge" and not finite["fedavg+gm"] and all(v for m, v in finite.items() if m != "fedavg+gm"):
        # two finite +1e308 uploads reach the aggregator: the plain Weiszfeld iteration starts
        # from their mean, which overflows (hardening of p2pmtl/aggregators.py, another change)
        pytest.xfail("geometric median of several +1e308 uploads overflows in p2pmtl/aggregators.py")
    assert all(finite.values()), finite
    assert (srv.uploads_dropped_nonfinite == 3 * NONFINITE[kind]).all()
    assert (srv.rounds_without_update == 0).all()
    for name, v in srv.metrics().items():
        assert torch.isfinite(v.view(srv.m, srv.n)[:, ~torch.from_numpy(srv.is_byz)]).all(), name
    rec = srv.round_records(0)
    assert rec["uploads_dropped_nonfinite"].tolist() == [NONFINITE[kind]] * 3 and rec["updated"].all()


def test_linear_mean_survives_nonfinite_uploads():
    """The mean is not robust, but NaN/inf uploads never reach it: its model stays finite."""
    srv = _linear(["fedavg"], [NAN, -INF])
    assert torch.isfinite(_lane_models(srv)).all() and srv.uploads_dropped_nonfinite.tolist() == [6]


def test_pre_aggregation_steps_never_see_nonfinite_uploads(monkeypatch):
    seen = []
    original = NearestNeighborMixing._run  # every call of the step, with or without the aggregator fused

    def checked(self, x, *args):
        seen.append(bool(torch.isfinite(x).all()))
        return original(self, x, *args)

    monkeypatch.setattr(NearestNeighborMixing, "_run", checked)
    srv = _linear(["fedavg+krum"], [NAN, INF], pre=["nnm"])
    assert seen == [True] * 3 and srv.uploads_dropped_nonfinite.tolist() == [6]


def test_linear_round_with_too_few_uploads_keeps_the_model():
    """Krum (f = 2) needs 7 uploads: a round where 5 arrive keeps the model and is counted; the
    mean's lane updates."""
    srv = _linear(["fedavg+krum", "fedavg"], [NAN], rounds=0, byzantine=0)
    before = _lane_models(srv).clone()
    srv.round(0, arrives=lambda chosen: np.arange(len(chosen)) < 5)
    after = _lane_models(srv)
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    assert srv.rounds_without_update.tolist() == [1, 0]
    assert srv.round_records(0)["updated"].tolist() == [False]
    assert srv.round_records(1)["updated"].tolist() == [True]


def test_linear_round_short_after_dropping_nonfinite_is_counted():
    """3 of 10 clients upload NaN, Krum assumes f = 3 (needs 9): 7 finite uploads are too few,
    every round keeps the (finite) model; trimmed mean (n > 2f) still updates."""
    srv = _linear(["fedavg+krum", "fedavg+trimmed_mean"], [NAN], rounds=0, byzantine=3, f=3)
    start = _lane_models(srv).clone()
    for t in range(3):
        srv.round(t)
    models = _lane_models(srv)
    assert torch.equal(models[0], start[0]) and not torch.equal(models[1], start[1])
    assert srv.rounds_without_update.tolist() == [3, 0]
    assert srv.uploads_dropped_nonfinite.tolist() == [9, 9]


def test_linear_too_few_without_any_drop_is_an_error():
    srv = _linear(["fedavg+krum"], [NAN], rounds=0, byzantine=0)
    srv.picked = 4  # a world the config check would refuse: Krum (f = 2) needs 7 of every round
    with pytest.raises(ValueError, match="too few for the aggregator"):
        srv.round(0)


@pytest.mark.parametrize("error", [ValueError("segments do not sum to d"), RuntimeError("boom")])
def test_linear_aggregator_errors_propagate(monkeypatch, error):
    def broken(self, x):
        raise error

    monkeypatch.setattr(Krum, "_aggregate", broken)
    srv = _linear(["fedavg+krum"], [NAN], rounds=0)
    with pytest.raises(type(error), match=str(error)):
        srv.round(0)
    srv.aggregators[0] = lambda x: (_ for _ in ()).throw(ValueError("not about n"))
    with pytest.raises(ValueError, match="not about n"):
        srv.round(1)


def test_linear_run_reports_counts(tmp_path, hostile_attack):
    data = _linear_dict(["fedavg+gm", "fedavg+krum"], f=2)
    data["scenarios"] = [{"name": "clean"},
                         {"name": "attacked", "byzantine": 2, "attack": {"name": hostile_attack, "values": [NAN]}}]
    summary = run_experiment(load_config(data=data), tmp_path, progress=False, figures=False)
    res = json.loads((tmp_path / "summary.json").read_text())["results"]
    for m in ("fedavg+gm", "fedavg+krum"):
        assert res["clean"][m]["uploads_dropped_nonfinite"] == 0 and res["clean"][m]["rounds_without_update"] == 0
        assert res["attacked"][m]["uploads_dropped_nonfinite"] == 6 and res["attacked"][m]["rounds_without_update"] == 0
        assert math.isfinite(res["attacked"][m]["msd"]["last_window_mean"])
        arrays = np.load(tmp_path / "arrays" / f"server_rounds__attacked__{m}.npz")
        assert arrays["uploads_dropped_nonfinite"].tolist() == [2, 2, 2] and arrays["updated"].all()
    assert summary["status"] == "finished"


# --------------------------------------------------------------------------- CNN harness


def _server_dict(methods, f=2, clients=9) -> dict:
    return {"mode": "server", "iterations": 2, "graph": {"family": "star", "n": clients + 1},
            "task": {"name": "federated_images", "datasets": ["synthetic"], "synthetic_images": 300,
                     "train_per_client": 12, "test_per_client": 4, "batch_size": 6, "optimizer": "sgd", "lr": 0.05},
            "server": {"methods": methods, "alpha": 1.0, "tau_joint": 1, "tau_h": 1, "tau_phi": 1, "f": f,
                       "meta_test": {"clients": 0}},
            "output": {"window": 1, "figures": False},
            "scenarios": [{"name": "clean"}]}


def _clients(cfg, n=9, dtype=torch.float32) -> Clients:
    """n clients with 12 random 8 x 8 images each (a small CNN: fast rounds)."""
    gen = torch.Generator().manual_seed(0)
    data = []
    for _ in range(n):
        x = torch.rand((12, 1, 8, 8), generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (12,), generator=gen)
        data.append(((x, y), (x[:4], y[:4])))
    return Clients(cfg.task, data, 10, (1, 8, 8), init_seed=3, dtype=dtype)


def _cnn(method: str, values, byzantine=(1, 4), rounds=2, dtype=torch.float32, f=2) -> FederatedRun:
    cfg = load_config(data=_server_dict([method], f=f))
    clients = _clients(cfg, dtype=dtype)
    m = Method.parse(method)
    agg = build_aggregator(m, cfg.server, clients.rep_sizes, clients.all_sizes)
    run = FederatedRun(m, cfg.server, clients, agg, np.array(byzantine), HostileValues(values=values), seed=1)
    for t in range(rounds):
        run.round(t)
    return run


CNN_METHODS = ["br-mtrl+gm", "br-mtrl+krum", "fedavg+gm", "fedavg+krum", "fedavg+multi_krum",
               "fedavg+trimmed_mean", "fedavg+coordinate_median", "fedavg", "fedrep"]


@pytest.mark.parametrize("method", CNN_METHODS)
@pytest.mark.parametrize("kind", ["-inf", "mixed"])
def test_cnn_server_drops_nonfinite_uploads(method, kind):
    """9 clients, 2 Byzantine, f = 2 (Krum needs 7: the 7 finite uploads suffice). float32
    clients: 1e308 becomes inf and is dropped too; even the mean stays finite."""
    run = _cnn(method, HOSTILE[kind])
    assert torch.isfinite(run.global_state).all()
    assert run.uploads_dropped_nonfinite == 4 and run.rounds_without_update == 0
    assert run.round_records()["uploads_dropped_nonfinite"].tolist() == [2, 2]
    honest = [i for i in range(run.n) if i not in run.byzantine]
    for v in run.evaluate().values():
        assert torch.isfinite(v[honest]).all()


@pytest.mark.parametrize("method", ["fedavg+krum", "fedavg+coordinate_median"])
def test_cnn_server_float64_keeps_huge_finite_uploads(method):
    run = _cnn(method, [1e308], dtype=torch.float64, rounds=1)
    assert run.uploads_dropped_nonfinite == 0 and torch.isfinite(run.global_state).all()


def test_cnn_round_with_too_few_uploads_keeps_the_model():
    run = _cnn("fedavg+krum", [NAN], byzantine=(), rounds=0)
    start = run.global_state.clone()
    run.round(0, arrives=lambda chosen: np.arange(len(chosen)) < 6)  # Krum (f = 2) needs 7
    assert torch.equal(run.global_state, start)
    assert run.rounds_without_update == run.skipped_rounds == 1
    run.round(1)
    assert not torch.equal(run.global_state, start) and run.round_records()["updated"].tolist() == [False, True]


def test_cnn_all_uploads_nonfinite_keeps_the_model():
    run = _cnn("fedavg", [NAN], byzantine=range(9), rounds=0)
    start = run.global_state.clone()
    run.round(0)
    assert torch.equal(run.global_state, start)
    assert run.uploads_dropped_nonfinite == 9 and run.rounds_without_update == 1


def test_cnn_aggregator_errors_propagate(monkeypatch):
    run = _cnn("fedavg+krum", [NAN], byzantine=(), rounds=0)
    monkeypatch.setattr(Krum, "_aggregate", lambda self, x: (_ for _ in ()).throw(ValueError("not about n")))
    with pytest.raises(ValueError, match="not about n"):
        run.round(0)


def test_cnn_run_reports_counts(tmp_path, hostile_attack):
    data = _server_dict(["br-mtrl+krum", "fedavg"])
    data["scenarios"] = [{"name": "attacked", "byzantine": 2, "attack": {"name": hostile_attack, "values": [INF]}}]
    run_experiment(load_config(data=data), tmp_path, progress=False, figures=False)
    res = json.loads((tmp_path / "summary.json").read_text())["results"]["attacked"]
    for m in ("br-mtrl+krum", "fedavg"):
        assert res[m]["uploads_dropped_nonfinite"] == 4
        assert res[m]["rounds_without_update"] == res[m]["skipped_rounds"] == 0
        assert math.isfinite(res[m]["test_loss"]["last_window_mean"])
        arrays = np.load(tmp_path / "arrays" / f"server_rounds__attacked__{m}.npz")
        assert arrays["uploads_dropped_nonfinite"].tolist() == [2, 2] and arrays["updated"].tolist() == [True, True]


def test_geometric_median_segments_that_do_not_sum_to_the_model_size_are_a_config_error(tmp_path):
    from p2pmtl.cli import main

    data = {"name": "seg", "mode": "server", "iterations": 2, "graph": {"family": "star", "n": 6},
            "server": {"alpha": 1.0, "methods": ["fedavg+gm"], "aggregator_params": {"segments": [1, 5]}},
            "scenarios": [{"name": "a"}]}
    from p2pmtl.experiments.config import _to_toml

    path = tmp_path / "seg.toml"
    path.write_text(_to_toml(data))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "--no-figures", "-q"]) == 2
