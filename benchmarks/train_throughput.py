"""Training throughput (images/s) of ShuffleNet 1x, g=3 on this CPU: our training step against a plain eager
PyTorch baseline of the same network, in the same run, interleaved.

    python benchmarks/train_throughput.py                 # 32x32 (CIFAR stem) and 224x224, about 1-2 min
    python benchmarks/train_throughput.py --sizes 32 --reps 5 --json

"Ours" is ``create_model("shufflenet_v1_g3_x1_0", small_input=...)`` trained by
:func:`shufflenet.train.train_one_epoch` as ``shufflenet train`` runs it on CPU (channels-last memory format,
SGD with momentum, per-step loss check). The baseline is the same network written the usual way (below: NCHW,
shuffle by ``view``/``transpose``/``contiguous``) with the textbook loop. Both see the same random batches;
the parameter counts are checked equal. Each repetition times a few steps of each in turn (after a warm-up),
and the median images/s of each is reported with their ratio.
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
from torch import nn

from shufflenet import create_model
from shufflenet.distributed import DistContext
from shufflenet.train.engine import EpochStats, train_one_epoch


# ----------------------------------------------------------------- the baseline, written the usual way
def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class Unit(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, groups: int, first_grouped: bool = True
    ) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        branch = cout - cin if stride == 2 else cout
        mid = cout // 4
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=groups if first_grouped else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = shuffle(out, self.groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), out], 1))
        return F.relu(x + out)


class BaselineShuffleNet(nn.Module):
    """ShuffleNet 1x, g=3 (Table 1): stem 24, stages 240/480/960 with 4/8/4 units."""

    def __init__(self, num_classes: int, small_input: bool, groups: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, 1 if small_input else 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.pool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 24
        for i, (cout, repeats) in enumerate(zip((240, 480, 960), (4, 8, 4))):
            for j in range(repeats):
                layers.append(
                    Unit(cin, cout, 2 if j == 0 else 1, groups, first_grouped=(i, j) != (0, 0))
                )
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(960, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.stages(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# ----------------------------------------------------------------- timing
def baseline_steps(model, opt, batches) -> None:
    model.train()
    for x, y, _ in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def our_steps(model, opt, sched, batches, ctx) -> None:
    train_one_epoch(
        model, batches, opt, sched, nn.CrossEntropyLoss(), ctx, EpochStats(), channels_last=True
    )


def measure(size: int, batch: int, steps: int, reps: int) -> dict:
    small = size <= 64
    classes = 10 if small else 1000
    torch.manual_seed(0)
    ours = create_model("shufflenet_v1_g3_x1_0", num_classes=classes, small_input=small)
    ours = ours.to(memory_format=torch.channels_last)
    base = BaselineShuffleNet(classes, small)
    n_ours, n_base = (sum(p.numel() for p in m.parameters()) for m in (ours, base))
    if n_ours != n_base:
        raise AssertionError(
            f"the baseline is not the same network: {n_base:,} vs {n_ours:,} parameters"
        )
    g = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(batch, 3, size, size, generator=g),
            torch.randint(0, classes, (batch,), generator=g),
            [],
        )
        for _ in range(steps)
    ]
    opt_b = torch.optim.SGD(base.parameters(), lr=0.01, momentum=0.9)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_o, lambda s: 1.0)
    ctx = DistContext()
    run_base = lambda: baseline_steps(base, opt_b, batches)  # noqa: E731
    run_ours = lambda: our_steps(ours, opt_o, sched, batches, ctx)  # noqa: E731
    run_base(), run_ours()  # warm-up (allocator, oneDNN primitive caches)
    speeds: dict[str, list[float]] = {"baseline": [], "ours": []}
    for _ in range(reps):
        for name, fn in (("baseline", run_base), ("ours", run_ours)):
            t = time.perf_counter()
            fn()
            speeds[name].append(batch * steps / (time.perf_counter() - t))
    b, o = statistics.median(speeds["baseline"]), statistics.median(speeds["ours"])
    return {
        "size": size,
        "batch": batch,
        "params": n_ours,
        "baseline_img_s": b,
        "ours_img_s": o,
        "ratio": o / b,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    p.add_argument("--batch-32", type=int, default=64, help="batch size for images <= 64 px")
    p.add_argument("--batch-224", type=int, default=16, help="batch size for larger images")
    p.add_argument("--steps", type=int, default=2, help="training steps per timed repetition")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions of each, interleaved")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        print(
            f"warning: load average {load:.1f} on {cores} cores: other processes share the CPU and "
            "multi-threaded timings suffer most (compare with --threads 1)",
            file=sys.stderr,
        )
    rows = []
    for size in args.sizes:
        batch = args.batch_32 if size <= 64 else args.batch_224
        rows.append(measure(size, batch, args.steps, args.reps))
        r = rows[-1]
        if not args.json:
            print(
                f"{size}x{size} batch {batch} ({'CIFAR stem' if size <= 64 else 'ImageNet stem'}, "
                f"{r['params']:,} params): baseline {r['baseline_img_s']:.1f} img/s, ours "
                f"{r['ours_img_s']:.1f} img/s, ratio {r['ratio']:.2f}x",
                flush=True,
            )
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "results": rows}, indent=2))
    else:
        n = torch.get_num_threads()
        print(f"({n} thread{'s' if n > 1 else ''}, median of {args.reps} interleaved repetitions)")


if __name__ == "__main__":
    main()
