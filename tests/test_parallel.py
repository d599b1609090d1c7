"""Group parallelism on 2 CPU processes (Gloo on loopback): the group-parallel model trains exactly like the
single-process model with the same weights, checkpoints are ordinary model files, and a failing rank makes the
others fail fast."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from shufflenet import create_model, load_model
from shufflenet.parallel import (
    GroupParallelError,
    build_group_parallel,
    clip_grad_norm_,
    count_comm,
    gather_grads,
    gather_state_dict,
    load_full_state_dict,
    replica_divergence,
    replicated_parameters,
    save_group_parallel,
    sync_replicated_grads,
)
from shufflenet.parallel.launch import run_local

SHUFFLENET_G2 = (
    "shufflenet_v1_g2_x0_25",
    dict(num_classes=10, small_input=True, stage_repeats=(1, 2, 1)),
    16,
)
SHUFFLENET_G4 = (
    "shufflenet_v1_g4_x0_25",
    dict(
        num_classes=10,
        small_input=True,
        stage_repeats=(1, 1, 2),
        se=True,
        shuffle_position="after_dw",
    ),
    16,
)
ALEXNET = ("alexnet_g2", dict(num_classes=10, drop_rate=0.0), 67)


def _max_rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-6) -> float:
    """Largest difference relative to the reference tensor's scale (at least ``floor``: a gradient that is
    exactly zero in exact arithmetic, like a bias followed by batch norm, is rounding noise in both)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


def _narrow_classifier(model: torch.nn.Module) -> None:
    """AlexNet with 64-wide fc6/fc7 (same layer kinds and order as 4096): the fast test of its conversion."""
    nn = torch.nn
    model.classifier = nn.Sequential(
        nn.Dropout(0.0),
        nn.Linear(256 * 36, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(0.0),
        nn.Linear(64, 64),
        nn.ReLU(inplace=True),
        nn.Linear(64, 10),
    )


def _train_and_compare(
    rank, world, name, kwargs, size, dense, dtype, steps=3, narrow=False, batch=4
):
    """Train the reference and the group-parallel model side by side; return the largest relative errors."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    if narrow:
        _narrow_classifier(model)
    model = model.to(dtype)
    ref = copy.deepcopy(model)
    pmodel = build_group_parallel(model, dense=dense, seed=1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt = torch.optim.SGD(pmodel.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    data = torch.Generator().manual_seed(123)
    err = {"logits": 0.0, "loss": 0.0, "grad": 0.0, "state": 0.0, "eval": 0.0, "input_grad": 0.0}
    for step in range(steps):
        x = torch.randn(batch, 3, size, size, generator=data, dtype=dtype)
        y = torch.randint(0, 10, (batch,), generator=data)
        x_ref = x.clone().requires_grad_(step == 0)  # the input's gradient too, once
        x.requires_grad_(step == 0)
        out_ref = ref(x_ref)
        loss_ref = F.cross_entropy(out_ref, y)
        opt_ref.zero_grad()
        loss_ref.backward()
        out = pmodel(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        err["logits"] = max(err["logits"], _max_rel(out, out_ref))
        err["loss"] = max(err["loss"], _max_rel(loss, loss_ref))
        if step == 0:
            err["input_grad"] = _max_rel(x.grad, x_ref.grad)
        grads = gather_grads(pmodel)
        scale = 1e-3 * max(float(p.grad.abs().max()) for p in ref.parameters())
        for n, p in ref.named_parameters():
            err["grad"] = max(err["grad"], _max_rel(grads[n], p.grad, scale))
        opt.step()
        opt_ref.step()
    state = gather_state_dict(pmodel)
    assert list(state) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        if v.is_floating_point():
            err["state"] = max(err["state"], _max_rel(state[k], v, 1e-3))
        else:
            err["state"] = max(err["state"], float((state[k] != v).any()))
    x = torch.randn(batch, 3, size, size, generator=data, dtype=dtype)
    err["eval"] = _max_rel(pmodel.eval()(x), ref.eval()(x))
    err["replicas"] = replica_divergence(pmodel)
    err["n_replicated"] = len(replicated_parameters(pmodel))
    return err


CASES = [
    pytest.param(*SHUFFLENET_G2, "split", torch.float64, 3, False, id="shufflenet_g2-split-f64"),
    pytest.param(
        *SHUFFLENET_G2, "replicate", torch.float32, 3, False, id="shufflenet_g2-replicate-f32"
    ),
    pytest.param(
        *SHUFFLENET_G4, "split", torch.float64, 3, False, id="shufflenet_g4_se_after_dw-split-f64"
    ),
    pytest.param(*ALEXNET, "split", torch.float64, 3, True, id="alexnet_g2_narrow_fc-split-f64"),
    pytest.param(
        *ALEXNET, "replicate", torch.float64, 3, True, id="alexnet_g2_narrow_fc-replicate-f64"
    ),
    # the real classifier has 58M parameters: float32, 2 steps, and still slow on 2 cores
    pytest.param(
        *ALEXNET,
        "split",
        torch.float32,
        2,
        False,
        id="alexnet_g2-split-f32",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("name, kwargs, size, dense, dtype, steps, narrow", CASES)
def test_training_matches_single_process(name, kwargs, size, dense, dtype, steps, narrow):
    """Forward, loss, gradients, parameters and BN statistics over a few SGD steps, on both ranks."""
    results = run_local(
        _train_and_compare, 2, name, kwargs, size, dense, dtype, steps, narrow, timeout_s=240
    )
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for rank, err in enumerate(results):
        for key in ("logits", "loss", "grad", "input_grad", "state", "eval"):
            assert err[key] < tol, f"rank {rank}: {key} differs by {err[key]:.3g}"
        assert err["replicas"] == 0.0, f"replicas diverged by {err['replicas']}"


def _checkpoint_roundtrip(rank, world, path):
    torch.manual_seed(0)
    name, kwargs, size = SHUFFLENET_G2
    pmodel = build_group_parallel(create_model(name, **kwargs), seed=1)
    x = torch.randn(2, 3, size, size)
    F.cross_entropy(pmodel(x), torch.tensor([1, 2])).backward()  # BN statistics move
    pmodel.eval()
    expected = pmodel(x)
    save_group_parallel(path, pmodel, class_names=[str(i) for i in range(10)])
    torch.distributed.barrier()
    loaded, info = load_model(path)  # the ordinary single-device model
    single = loaded(x)
    again = build_group_parallel(loaded, seed=1).eval()  # back into group-parallel form
    torch.manual_seed(1)
    other = build_group_parallel(create_model(name, **kwargs), seed=1).eval()
    load_full_state_dict(other, gather_state_dict(pmodel))
    return [
        _max_rel(single, expected),
        _max_rel(again(x), expected),
        _max_rel(other(x), expected),
        info.arch,
    ]


def test_checkpoint_is_an_ordinary_model_file(tmp_path):
    results = run_local(
        _checkpoint_roundtrip, 2, str(tmp_path / "model.safetensors"), timeout_s=120
    )
    for single, again, other, arch in results:
        assert arch == "shufflenet_v1_g2_x0_25"
        assert single < 1e-5 and again < 1e-5 and other < 1e-5


def _dropout_and_helpers(rank, world):
    """With dropout on, the replicas stay identical; the helpers agree with their single-process meaning."""
    torch.manual_seed(0)
    name, kwargs, size = SHUFFLENET_G2
    model = create_model(name, **{**kwargs, "drop_rate": 0.5})
    ref = copy.deepcopy(model)
    # the dropout seed is drawn on every rank (rank 0's is broadcast), so the ranks' RNGs stay in step
    # and the batch drawn next is the same everywhere
    pmodel = build_group_parallel(model, dense="replicate")
    x = torch.randn(4, 3, size, size)
    y = torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(2):
        pmodel.zero_grad()
        loss = F.cross_entropy(pmodel(x), y)
        loss.backward()
        losses.append(loss.item())
    before = replica_divergence(pmodel, grads=True)
    sync_replicated_grads(pmodel)
    after = replica_divergence(pmodel, grads=True)
    # clip_grad_norm_ clips by the full model's gradient norm: compare with the reference (dropout off)
    ref.load_state_dict(gather_state_dict(pmodel))  # BN statistics moved during the steps above
    pmodel.eval(), ref.eval()
    pmodel.zero_grad()
    F.cross_entropy(pmodel(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    norm = clip_grad_norm_(pmodel, 1e-3)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1e-3)
    clipped = gather_grads(pmodel)
    clip_err = max(_max_rel(clipped[n], p.grad, 1e-9) for n, p in ref.named_parameters())
    try:  # a different batch on each rank is refused
        pmodel(x + rank)
        mismatch = ""
    except GroupParallelError as e:
        mismatch = str(e)
    return losses, before, after, float(norm), float(ref_norm), clip_err, mismatch


def test_dropout_replicas_and_training_helpers():
    (l0, b0, a0, n0, r0, c0, m0), (l1, *_, n1, r1, c1, m1) = run_local(
        _dropout_and_helpers, 2, timeout_s=120
    )
    assert l0 == l1, "the loss must be identical on every rank"
    assert l0[0] != l0[1], "dropout draws new masks each step"
    assert b0 == 0.0 and a0 == 0.0, "replicated gradients must agree across ranks"
    assert abs(n0 - r0) / r0 < 1e-5 and n0 == n1
    assert c0 < 1e-4 and c1 < 1e-4
    assert "different input batches" in m0 and "different input batches" in m1


def _count_bytes(rank, world):
    torch.manual_seed(0)
    name, kwargs, size = SHUFFLENET_G2
    pmodel = build_group_parallel(create_model(name, **kwargs), seed=1)
    x = torch.randn(4, 3, size, size)
    with count_comm() as counter:
        F.cross_entropy(pmodel(x), torch.tensor([1, 2, 3, 4])).backward()
    return counter.by("phase"), counter.by("op")


def test_bytes_are_counted_per_phase():
    (phase0, op0), (phase1, op1) = run_local(_count_bytes, 2, timeout_s=60)
    assert phase0["forward"] > 0 and phase0["backward"] > 0
    assert set(op0) == {"all_to_all", "all_gather", "reduce_scatter", "all_reduce"}
    # Every all-to-all byte rank 0 sends, rank 1 receives: the two directions are the same size here.
    assert op0["all_gather"] == op1["all_gather"]


def _fail(rank, world, mode, report):
    torch.manual_seed(0)
    name, kwargs, size = SHUFFLENET_G2
    pmodel = build_group_parallel(create_model(name, **kwargs), seed=1, check_inputs=False)
    x = torch.randn(2, 3, size, size)
    if rank == 1:
        if mode == "crash":
            raise RuntimeError("injected failure on rank 1")
        if mode == "killed":
            os._exit(3)
        time.sleep(60)  # stuck: rank 0 must time out long before this
        return None
    start = time.monotonic()
    try:
        pmodel(x)
    except GroupParallelError as e:
        with open(report, "w") as f:
            f.write(f"{time.monotonic() - start:.2f}\n{e}")
        raise
    return None


@pytest.mark.parametrize("mode", ["crash", "killed", "stuck"])
def test_failing_rank_fails_the_others_fast(tmp_path, mode):
    report = tmp_path / "rank0.txt"
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        run_local(_fail, 2, mode, str(report), timeout_s=60, pg_timeout_s=3)
    elapsed, message = report.read_text().split("\n", 1)
    assert "rank 0/2" in message and "stages.0.0" in message  # names the rank and the layer
    assert float(elapsed) < 10, f"rank 0 took {elapsed} s to fail"
    assert time.monotonic() - start < 45
    if mode == "crash":
        assert "injected failure on rank 1" in str(info.value)
    if mode == "killed":  # the survivor names the rank whose process exited
        assert "rank 1 (pid " in message and "exited" in message
    elif mode == "stuck":  # a stuck rank is alive: nothing to name, the timeout is the explanation
        assert "rank 1 (pid" not in message and "process-group timeout" in message
    assert "GroupParallelError" in str(info.value)


def test_wrong_world_size_is_refused():
    """P must divide g: a 3-process group cannot split 2 groups (checked before any communication)."""
    from shufflenet.parallel import ParallelContext, convert_group_parallel

    model = create_model("alexnet_g2", num_classes=10)
    with pytest.raises(ValueError, match="P=3 must divide the number of groups g=2"):
        convert_group_parallel(model, ParallelContext(rank=0, world_size=3))
    with pytest.raises(TypeError, match="supports ShuffleNetV1 and AlexNet"):
        convert_group_parallel(torch.nn.Linear(2, 2), ParallelContext.single())


@pytest.mark.skipif(os.name != "posix", reason="loopback Gloo")
def test_build_outside_torchrun_explains(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        build_group_parallel(create_model("alexnet_g2", num_classes=10))


def _measure_against_formula(rank, world, name, kwargs, size, dense, narrow):
    from shufflenet.parallel.cost import predicted_comm_bytes

    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    if narrow:
        _narrow_classifier(model)
    predicted = predicted_comm_bytes(model, world, 4, size, dense, rank)
    pmodel = build_group_parallel(model, dense=dense, seed=1)
    x = torch.randn(4, 3, size, size)
    with count_comm() as counter:
        F.cross_entropy(pmodel(x), torch.tensor([1, 2, 3, 4])).backward()
    measured = {(r.tag, r.phase, r.op): 0 for r in counter.records}
    for r in counter.records:
        measured[(r.tag, r.phase, r.op)] += r.nbytes
    return measured, {(t, p, o): n for t, p, o, n in predicted}


@pytest.mark.parametrize(
    "name, kwargs, size, dense, narrow",
    [
        pytest.param(*SHUFFLENET_G2, "split", False, id="shufflenet_g2-split"),
        pytest.param(*SHUFFLENET_G4, "replicate", False, id="shufflenet_g4_se-replicate"),
        pytest.param(*ALEXNET, "split", True, id="alexnet_narrow_fc-split"),
        pytest.param(*ALEXNET, "replicate", True, id="alexnet_narrow_fc-replicate"),
    ],
)
def test_measured_bytes_match_the_formula(name, kwargs, size, dense, narrow):
    """Every collective's bytes, per layer and phase, equal the closed-form prediction from layer shapes."""
    for measured, predicted in run_local(
        _measure_against_formula, 2, name, kwargs, size, dense, narrow
    ):
        measured = {k: v for k, v in measured.items() if v}
        diff = {
            k: (measured.get(k), predicted.get(k))
            for k in measured.keys() | predicted.keys()
            if measured.get(k) != predicted.get(k)
        }
        assert not diff, f"(measured, predicted) bytes differ: {diff}"


TORCHRUN_SCRIPT = """
import torch, torch.distributed as dist, torch.nn.functional as F
import shufflenet
from shufflenet.parallel import build_group_parallel, save_group_parallel

torch.manual_seed(0)
model = shufflenet.create_model("shufflenet_v1_g2_x0_25", num_classes=10, small_input=True, stage_repeats=(1, 1, 1))
pmodel = build_group_parallel(model)  # initialises the process group from torchrun's environment
optimizer = torch.optim.SGD(pmodel.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
for _ in range(2):
    optimizer.zero_grad()
    loss = F.cross_entropy(pmodel(x), y)
    loss.backward()
    optimizer.step()
save_group_parallel("{path}", pmodel)
print(f"rank {{dist.get_rank()}}/{{dist.get_world_size()}} {{dist.get_backend()}} loss {{loss.item():.8f}}", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_under_torchrun(tmp_path):
    """build_group_parallel under ``torchrun --nproc-per-node 2`` with no explicit init_process_group."""
    script = tmp_path / "train.py"
    path = tmp_path / "model.safetensors"
    script.write_text(TORCHRUN_SCRIPT.format(path=path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHUFFLENET_DIST_TIMEOUT": "60"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert [line.split(" loss")[0] for line in lines] == ["rank 0/2 gloo", "rank 1/2 gloo"]
    assert lines[0].split(" loss ")[1] == lines[1].split(" loss ")[1]  # the same loss on every rank
    model, _ = load_model(path)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)
