"""Freed memory kept for reuse (allocator.py): training steps of the attention head, the kind of
work whose large blocks glibc otherwise hands back to the kernel and faults in again each step.
Counted in page faults, not timed."""
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
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults_of_five_steps(threshold_mb: int) -> tuple[str, int]:
    applied, faults = subprocess.run([sys.executable, "-c", PROBE, str(threshold_mb)], capture_output=True,
                                     text=True, check=True).stdout.split()
    return applied, int(faults)


def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again():
    kept, kept_faults = _page_faults_of_five_steps(256)
    default, default_faults = _page_faults_of_five_steps(0)
    assert (kept, default) == ("True", "False")
    # each step's activations are tens of MB: without, five steps fault in a few hundred MB anew
    assert default_faults > 20_000 and kept_faults * 4 < default_faults, (kept_faults, default_faults)
