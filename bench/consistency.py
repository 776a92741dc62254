"""What the cross-BS consistency check costs a multi-BS `/locate`: the per-BS models and
scores (`ServedSite.predict_bs_scored` for every BS, then the median rule, on the version
loaded without its check: the baseline) against the same version as served (each BS's
spatial statistic computed once with its score, then `Consistency.score`), in one run,
interleaved, for a few batch sizes; prints the medians and their ratio.

    python3 bench/consistency.py REPO SITE SITE.h5 [GROUP] [--repeats 200]

REPO holds an adapted multi-BS site with a `consistency.npz` (any adaptation of this
main with detectors on every BS; docs/results/site-trust/consistency).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from service.store import ServedSite
from training.data.site import read_site
from training.novelty import combine_scores
from training.repository import ModelRepository


def _base(plain: ServedSite, csi: dict[str, np.ndarray]) -> np.ndarray:
    """What the service does without the check: the median over the BSs' scores."""
    scores = [plain.predict_bs_scored(bs, c).score for bs, c in csi.items()]
    return combine_scores(np.stack([s for s in scores if s is not None]))


def _with_check(served: ServedSite, csi: dict[str, np.ndarray]) -> np.ndarray:
    """What it does with it (`Positioner.locate_bs`, `ServedSite.ue_novelty`)."""
    answers = {bs: served.predict_bs_scored(bs, c) for bs, c in csi.items()}
    scores = np.stack([a.score for a in answers.values() if a.score is not None])
    spatial = {bs: a.spatial for bs, a in answers.items() if a.spatial is not None}
    return served.ue_novelty(scores, spatial)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repo", type=Path)
    ap.add_argument("site")
    ap.add_argument("data", type=Path)
    ap.add_argument("group", nargs="?")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--batches", default="1,16,64")
    args = ap.parse_args()
    repo = ModelRepository(args.repo)
    version = repo.resolve("site", args.site)
    served = ServedSite(args.site, version, repo.path("site", args.site, version)).load()
    if served.consistency is None:
        raise SystemExit(f"{args.site} {version}: no consistency.npz")
    plain = ServedSite(args.site, version, repo.path("site", args.site, version)).load()
    plain.consistency = None
    data = read_site(args.data, args.group)
    print(f"site {args.site} {version}: BSs {list(served.base_stations)}; load {os.getloadavg()}")
    print("| UEs per call | per-BS models + median (ms) | + cross-BS check (ms) | ratio |")
    print("|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        csi = {bs: data.station(bs).csi[:batch] for bs in served.base_stations}

        times: dict[str, list[float]] = {"base": [], "check": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            for name, run, site in (("base", _base, plain), ("check", _with_check, served)):
                t = time.perf_counter()
                run(site, csi)
                times[name].append(time.perf_counter() - t)
        b, c = (1e3 * float(np.median(times[k])) for k in ("base", "check"))
        print(f"| {batch} | {b:.3f} | {c:.3f} | {c / b:.3f} |")


if __name__ == "__main__":
    main()
