"""Freed memory kept for reuse (allocator.py): training steps of the attention head, the kind of
work whose large blocks glibc otherwise hands back to the kernel and faults in again each step.
Counted in page faults over fifteen steps, not timed. With freed memory kept, the heap still grows
by a block now and then when freed ones are fragmented, in up to half the steps of a run: a median
step failed about one run in ten; over thirty runs the kept total was at most a sixth of the
default's, which faults every step's activations in anew."""
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
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, min(faults), sum(faults))
"""


def _page_faults_of_fifteen_steps(threshold_mb: int) -> tuple[str, int, int]:
    """Whether the setting was applied, the fewest faults of one step, and the total."""
    applied, fewest, total = subprocess.run([sys.executable, "-c", PROBE, str(threshold_mb)], capture_output=True,
                                            text=True, check=True).stdout.split()
    return applied, int(fewest), int(total)


def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    kept, _, kept_faults = _page_faults_of_fifteen_steps(256)
    default, default_fewest, default_faults = _page_faults_of_fifteen_steps(0)
    assert (kept, default) == ("True", "False")
    # each step's activations are tens of MB: without, every step faults them in anew
    assert default_fewest > 10_000, default_fewest
    assert kept_faults * 3 < default_faults, (kept_faults, default_faults)
