"""Training steps on random inputs under glibc's allocator settings: wall, user and kernel time,
page faults, peak memory (RESULTS.md, "Freed memory kept for reuse").

    python scripts/allocator_bench.py classifier            # Lite0, batch 32 at 288, 5 steps
    python scripts/allocator_bench.py head                  # the attention head, one epoch of 4,000 maps
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=134217728:glibc.malloc.trim_threshold=134217728 \
        python scripts/allocator_bench.py classifier --threshold-mb 0   # other thresholds, set at start

--threshold-mb N applies keep_freed_memory(N) as the product does (0: glibc's defaults).
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.engine.allocator import keep_freed_memory  # noqa: E402
from search.engine.attention import AttentionHead  # noqa: E402
from search.engine.backbones import build_backbone  # noqa: E402


def classifier_step():
    backbone = build_backbone("efficientnet_lite0", 10, pretrained=True).train()
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.01, momentum=0.9)
    images, targets = torch.randn(32, 3, 288, 288), torch.randint(0, 10, (32,))

    def step():
        loss = F.cross_entropy(backbone(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step, 5


def head_epoch():
    maps, targets = torch.randn(4000, 112, 18, 18), torch.randint(0, 600, (4000,))
    head = AttentionHead(112, 600)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)

    def epoch():
        order = torch.randperm(len(maps))
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            loss = F.cross_entropy(head(maps[idx]), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return epoch, 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", choices=["classifier", "head"])
    parser.add_argument("--threshold-mb", type=int, default=256)
    args = parser.parse_args()
    applied = keep_freed_memory(args.threshold_mb)
    torch.manual_seed(0)
    step, repeats = classifier_step() if args.work == "classifier" else head_epoch()
    step()  # the first run allocates everything once
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(repeats):
        step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{args.work}, threshold {args.threshold_mb} MB (applied: {applied}): "
          f"wall {(time.perf_counter() - started) / repeats:.2f} s per run, user {after.ru_utime - before.ru_utime:.1f} s, "
          f"kernel {after.ru_stime - before.ru_stime:.1f} s, page faults {after.ru_minflt - before.ru_minflt}, "
          f"peak {after.ru_maxrss // 1024} MB")


if __name__ == "__main__":
    main()
