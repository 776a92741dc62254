"""Training steps with glibc's default malloc thresholds against `training.allocator`'s.

Each arm runs in its own process (the thresholds are process-wide): the paper's backbone
and a 4-output head, forward + backward + Adam at the target loop's batch of 64, on the
same random tensors. Rounds alternate the arms so load from other processes hits both
alike. Prints per arm the median ms a step, the kernel (system) seconds and minor page
faults per 100 steps, and the ratio kept / default; and whether the two arms' final
weights are equal bit for bit (they must be: only where memory comes from changes).

    python3 bench/allocator.py [--steps 100] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

ARM = """
import hashlib, json, resource, sys, time, torch
from training.allocator import keep_freed_memory
from training.nets import Backbone
keep, steps, threads = sys.argv[1] == "keep", int(sys.argv[2]), int(sys.argv[3])
if keep:
    assert keep_freed_memory(), "glibc refused the thresholds"
torch.set_num_threads(threads)
torch.manual_seed(0)
net = torch.nn.Sequential(Backbone(seed=0), torch.nn.Linear(128, 4))
x, y = torch.randn(64, 8, 103, 2), torch.randn(64, 4)
opt = torch.optim.Adam(net.parameters(), 1e-3)
def step():
    opt.zero_grad()
    (net(x) - y).square().mean().backward()
    opt.step()
for _ in range(5):
    step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters()))
print(json.dumps({
    "ms_per_step": 1000 * wall / steps,
    "sys_s_per_100": 100 * (r1.ru_stime - r0.ru_stime) / steps,
    "faults_per_100": 100 * (r1.ru_minflt - r0.ru_minflt) / steps,
    "weights": digest.hexdigest(),
}))
"""


def run_arm(arm: str, steps: int, threads: int) -> dict[str, float | str]:
    out = subprocess.run(
        [sys.executable, "-c", ARM, arm, str(steps), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float | str] = json.loads(out.stdout.splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float | str]]] = {"default": [], "keep": []}
    for _ in range(args.rounds):
        for arm, rows in runs.items():
            rows.append(run_arm(arm, args.steps, args.threads))
    med = {
        arm: {k: statistics.median(float(r[k]) for r in rows) for k in rows[0] if k != "weights"}
        for arm, rows in runs.items()
    }
    for arm, m in med.items():
        print(
            f"{arm:8s} {m['ms_per_step']:7.1f} ms/step  {m['sys_s_per_100']:5.2f} s kernel "
            f"and {m['faults_per_100']:9.0f} page faults per 100 steps"
        )
    same = len({str(r["weights"]) for rows in runs.values() for r in rows}) == 1
    print(f"ratio kept / default: {med['keep']['ms_per_step'] / med['default']['ms_per_step']:.2f}")
    print(f"final weights equal bit for bit in every run: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
