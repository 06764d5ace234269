"""Freed memory kept for reuse (allocator.py): training steps of the attention head, the kind of
work whose large blocks glibc otherwise hands back to the kernel and faults in again each step.
Counted in page faults, not timed: the median step's, since the heap now and then still grows by
a block when freed ones are fragmented, which makes a sum over a few steps vary run to run."""
import subprocess
import sys

PROBE = """
import resource, sys, torch, torch.nn.functional as F
from search.engine.allocator import keep_freed_memory
from search.engine.attention import AttentionHead

applied = keep_freed_memory(int(sys.argv[1]))
torch.manual_seed(0)
head = AttentionHead(112, 50)
maps, targets = torch.randn(64, 112, 18, 18), torch.randint(0, 50, (64,))

def step():
    loss = F.cross_entropy(head(maps), targets)
    head.zero_grad()
    loss.backward()

step()
step()
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sorted(faults)[len(faults) // 2])
"""


def _page_faults_of_a_median_step(threshold_mb: int) -> tuple[str, int]:
    applied, faults = subprocess.run([sys.executable, "-c", PROBE, str(threshold_mb)], capture_output=True,
                                     text=True, check=True).stdout.split()
    return applied, int(faults)


def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    kept, kept_faults = _page_faults_of_a_median_step(256)
    default, default_faults = _page_faults_of_a_median_step(0)
    assert (kept, default) == ("True", "False")
    # each step's activations are tens of MB: without, every step faults them in anew
    assert default_faults > 10_000 and kept_faults * 10 < default_faults, (kept_faults, default_faults)
