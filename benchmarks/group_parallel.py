"""Filter groups across devices: communication, memory and step time of group parallelism, P = 1 and 2.

For each model, one SGD training step (forward, backward, optimizer step) at batch ``N``:

- bytes each rank sends per step, measured by counting inside the collectives
  (:func:`shufflenet.parallel.count_comm`) and predicted from the layer shapes
  (:func:`shufflenet.parallel.cost.predicted_comm_bytes`); the script fails if they differ;
- memory per rank: parameters (x3 with gradients and SGD momentum) and activations (bytes of the tensors
  autograd saves for backward, parameters excluded), against the single-device model;
- step time (best and median of ``--steps`` after ``--warmup``; on a shared machine the best is the least
  disturbed by other load): P = 1 is the ordinary model on one process, P = 2
  the group-parallel model on two processes (Gloo over loopback); each process gets ``--threads-per-rank``
  cores (default 1: one core plays one device).

Run: ``python benchmarks/group_parallel.py`` (about 1-2 minutes on 2 cores); ``--json out.json`` keeps the
numbers. On a shared machine the times are noisy: compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from shufflenet import create_model
from shufflenet.parallel import build_group_parallel, count_comm
from shufflenet.parallel.cost import predicted_comm_bytes
from shufflenet.parallel.launch import run_local

CONFIGS = {
    "shufflenet_v1_g4_x1_0": dict(num_classes=1000),
    "shufflenet_v1_g8_x1_0": dict(num_classes=1000),
    "alexnet_g2": dict(num_classes=1000),
}


def _saved_activation_bytes(model, x, y) -> int:
    """Bytes of the distinct storages autograd saves for backward in one step, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _worker(rank, world, name, batch, size, steps, warmup, dense, group_parallel):
    torch.manual_seed(0)
    model = create_model(name, **CONFIGS[name])
    predicted = (
        predicted_comm_bytes(model, world, batch, size, dense, rank) if group_parallel else []
    )
    # P = 1 too: the group-parallel form on one process shows the machinery's overhead
    if group_parallel:
        model = build_group_parallel(model, dense=dense, seed=1)
    data = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=data)
    y = torch.randint(0, 1000, (batch,), generator=data)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    act_bytes = _saved_activation_bytes(model, x, y)
    times, comm_times = [], []
    for i in range(warmup + steps):
        with count_comm() as counter:
            if world > 1:
                torch.distributed.barrier()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            t1 = time.perf_counter()
        if i >= warmup:
            times.append(t1 - t0)
            comm_times.append(counter.total_seconds)
    by_layer: dict[str, int] = {}
    for rec in counter.records:
        by_layer[rec.tag] = by_layer.get(rec.tag, 0) + rec.nbytes
    return dict(
        rank=rank,
        step_s=min(times),
        step_median_s=statistics.median(times),
        comm_s=comm_times[times.index(min(times))],
        sent=counter.total_bytes,
        sent_by_phase=counter.by("phase"),
        sent_by_op=counter.by("op"),
        sent_by_layer=by_layer,
        predicted=sum(n for *_, n in predicted),
        param_bytes=param_bytes,
        activation_bytes=act_bytes,
        threads=torch.get_num_threads(),
    )


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["shufflenet_v1_g4_x1_0", "alexnet_g2"], choices=CONFIGS
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads-per-rank", type=int, default=1, help="cores per process (one 'device')"
    )
    parser.add_argument("--dense", choices=["split", "replicate"], default="split")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    results, ok = {}, True
    print(
        f"batch {args.batch}, {args.image_size} px, float32, SGD+momentum, dense={args.dense!r}, "
        f"{args.threads_per_rank} core(s) per process; load average {os.getloadavg()[0]:.1f}\n"
    )
    for name in args.models:
        common = (name, args.batch, args.image_size, args.steps, args.warmup, args.dense)
        single = run_local(
            _worker, 1, *common, False, threads=args.threads_per_rank, timeout_s=600
        )[0]
        form1 = run_local(_worker, 1, *common, True, threads=args.threads_per_rank, timeout_s=600)[
            0
        ]
        ranks = run_local(_worker, 2, *common, True, threads=args.threads_per_rank, timeout_s=600)
        results[name] = dict(single=single, group_parallel_p1=form1, ranks=ranks)
        print(f"## {name}")
        print("| | P=1 | P=1, group-parallel form | P=2 rank 0 | P=2 rank 1 |")
        print("|---|---|---|---|---|")
        cols = [single, form1, *ranks]
        print("| step time, best (s) | " + " | ".join(f"{c['step_s']:.3f}" for c in cols) + " |")
        print(
            "| step time, median (s) | "
            + " | ".join(f"{c['step_median_s']:.3f}" for c in cols)
            + " |"
        )
        print(
            "| of which in collectives (s) | - | - | "
            + " | ".join(f"{c['comm_s']:.3f}" for c in ranks)
            + " |"
        )
        print(
            "| sent per step, measured (MiB) | - | - | "
            + " | ".join(_mib(c["sent"]) for c in ranks)
            + " |"
        )
        print(
            "| sent per step, formula (MiB) | - | - | "
            + " | ".join(_mib(c["predicted"]) for c in ranks)
            + " |"
        )
        print(
            "| forward / backward (MiB) | - | - | "
            + " | ".join(
                f"{_mib(c['sent_by_phase'].get('forward', 0))} / {_mib(c['sent_by_phase'].get('backward', 0))}"
                for c in ranks
            )
            + " |"
        )
        print("| parameters (MiB) | " + " | ".join(_mib(c["param_bytes"]) for c in cols) + " |")
        print(
            "| params + grads + momentum (MiB) | "
            + " | ".join(_mib(3 * c["param_bytes"]) for c in cols)
            + " |"
        )
        print(
            "| saved activations (MiB) | "
            + " | ".join(_mib(c["activation_bytes"]) for c in cols)
            + " |"
        )
        top = sorted(ranks[0]["sent_by_layer"].items(), key=lambda kv: -kv[1])[:5]
        print("\nrank 0's largest senders: " + ", ".join(f"{k} {_mib(v)} MiB" for k, v in top))
        speedup = single["step_s"] / max(r["step_s"] for r in ranks)
        print(f"speed-up P=2 vs P=1 (best times): {speedup:.2f}x\n")
        for c in ranks:
            if c["sent"] != c["predicted"]:
                ok = False
                print(
                    f"MISMATCH rank {c['rank']}: measured {c['sent']} B, formula {c['predicted']} B"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
