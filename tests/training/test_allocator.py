"""The allocator thresholds: applied once, and a training step stops faulting pages in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from training import allocator

# Ten fwd/bwd steps of the paper's backbone at the target loop's batch; prints the minor
# page faults of the last five (after the allocator has seen every buffer size once).
STEPS = """
import resource, sys, torch
from training.allocator import keep_freed_memory
from training.nets import Backbone
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
net = Backbone(seed=0)
x = torch.randn(64, 8, 103, 2)
for i in range(10):
    if i == 5:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x).square().mean().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(arm: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", STEPS, arm], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_training_steps_stop_faulting_pages_in() -> None:
    kept, default = _faults("keep"), _faults("default")
    # ~7,000 faults a step with glibc's defaults here (8 MB buffers mapped afresh); kept,
    # 0-500 in all (the rest of the process's pages: ~2 MB under load at most)
    assert kept * 20 < default, (kept, default)


def test_applied_once_and_the_answer_is_kept() -> None:
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first
    assert first is (platform.libc_ver()[0] == "glibc")
