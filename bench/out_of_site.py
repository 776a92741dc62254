"""Out-of-site detectors compared on one published site: the product's Mahalanobis
distance with Ledoit-Wolf shrinkage against a fixed-ridge Mahalanobis and kNN distance
on the same features, and the same Mahalanobis on other layers of the backbone.

Every detector sees the same features (the site version's backbone) and the same
splits: fitted on the site's training split, its threshold the split-conformal
quantile of the validation split at the same false-alarm target (1 %), false alarms
counted on the held-out test set (`csipos train site --holdout`, same --seed) and
detection on other sites' environments. The baseline is the product's detector; the
other rows print their detection and false alarms beside it. Other layers: ``pre`` is
the dense layer before its activation (128), ``conv`` the flattened output of the
convolution blocks (800 for the default backbone).

    python3 bench/out_of_site.py --model REPO/sites/SITE --data FILE --env ENV \\
        --ood-data FILE... --ood-env 'lab-nlos,proc/*/bs0' [--max-foreign 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from training.checkpoint import load_site_model
from training.cli.train import _expand_envs, parse_model_ref
from training.data.fingerprints import Fingerprints, read_environment
from training.data.splits import split_train_val
from training.inputs import apply_inputs
from training.nets import Backbone, normalise_power
from training.novelty import DEFAULT_FALSE_ALARM, backbone_features, conformal_threshold
from training.novelty import fit_novelty as fit_lw
from training.repository import ModelRepository
from training.transfer import holdout_split

F64 = npt.NDArray[np.float64]
Scorer = Callable[[F64], F64]


def ridge_mahalanobis(train: F64, ridge: float = 1e-2) -> Scorer:
    """Sample covariance plus a fixed ridge of ``ridge * trace / p`` on the diagonal."""
    mean = train.mean(axis=0)
    cov = np.cov(train, rowvar=False, bias=True)
    cov += ridge * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov)
    return lambda f: np.sqrt(np.einsum("ij,jk,ik->i", f - mean, precision, f - mean))


def knn(train: F64, k: int = 10, standardise: bool = False) -> Scorer:
    """Mean Euclidean distance to the ``k`` nearest training features (per-feature
    standardised when asked)."""
    scale = train.std(axis=0) + 1e-6 if standardise else np.ones(train.shape[1])
    ref = torch.from_numpy(train / scale)

    def score(f: F64) -> F64:
        d = torch.cdist(torch.from_numpy(f / scale), ref)
        return np.asarray(d.topk(k, largest=False).values.mean(dim=1).numpy())

    return score


@torch.no_grad()
def inner_layers(backbone: Backbone, csi: npt.ArrayLike) -> tuple[F64, F64]:
    """(flattened convolution output, dense layer before its activation), as in
    `Backbone.forward`."""
    backbone.eval()
    x = torch.as_tensor(np.asarray(csi, dtype=np.float32))
    x = apply_inputs(normalise_power(x), backbone.config.inputs).permute(0, 3, 1, 2)
    conv = backbone.blocks(x).flatten(1)
    return conv.double().numpy(), backbone.dense(conv).double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--env", required=True)
    ap.add_argument("--ood-data", type=Path, action="append", default=[])
    ap.add_argument("--ood-env", required=True)
    ap.add_argument("--max-foreign", type=int, default=2000)
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    ref = parse_model_ref(args.model)
    repo = ModelRepository(ref.root)
    version = repo.resolve("site", ref.name, ref.version)
    config = repo.manifest("site", ref.name, version)["config"]
    model = load_site_model(repo, ref.name, version)
    data = read_environment(args.data, args.env)
    pool, test = holdout_split(data, config["holdout"], config["fraction"], config["seed"])
    train, val = split_train_val(pool, config["val_fraction"], config["seed"])
    assert test is not None, "the site was adapted without --holdout: no test set"

    layers: dict[str, dict[str, F64]] = {"pre": {}, "conv": {}}

    def feats(fp: Fingerprints, key: str) -> F64:
        layers["conv"][key], layers["pre"][key] = inner_layers(model.backbone, fp.csi)
        return backbone_features(model.backbone, fp.csi)

    f_train, f_val, f_test = feats(train, "train"), feats(val, "val"), feats(test, "test")
    rng = np.random.default_rng(0)
    foreign: dict[str, F64] = {}
    where = _expand_envs(args.ood_data or [args.data], args.ood_env, "--ood-env")
    for name, path in where.items():
        if name == args.env and path.resolve() == args.data.resolve():
            continue
        fp = read_environment(path, name)
        if len(fp) > args.max_foreign:
            fp = fp.subset(np.sort(rng.choice(len(fp), args.max_foreign, replace=False)))
        foreign[name] = feats(fp, name)

    lw = fit_lw(f_train, f_val)
    detectors: dict[str, Scorer] = {
        "mahalanobis-lw (product)": lw.distance,
        "mahalanobis-ridge-1e-2": ridge_mahalanobis(f_train),
        "knn-10": knn(f_train),
        "knn-10-standardised": knn(f_train, standardise=True),
    }
    sets = {"val": f_val, "test": f_test, **foreign}
    inputs: dict[str, dict[str, F64]] = dict.fromkeys(detectors, sets)
    for layer, values in layers.items():
        detectors[f"mahalanobis-lw on {layer}"] = fit_lw(values["train"], values["val"]).distance
        inputs[f"mahalanobis-lw on {layer}"] = values
    rows: dict[str, dict[str, float]] = {}
    for name, score in detectors.items():
        x = inputs[name]
        threshold = conformal_threshold(score(x["val"]), DEFAULT_FALSE_ALARM)
        row = {"false_alarm": float(np.mean(score(x["test"]) > threshold))}
        for env in foreign:
            row[env] = float(np.mean(score(x[env]) > threshold))
        det = [row[e] for e in foreign]
        row["detection_min"], row["detection_mean"] = float(min(det)), float(np.mean(det))
        rows[name] = row

    base = rows["mahalanobis-lw (product)"]
    print(f"site {ref.name} {version}: train {len(train)}, val {len(val)}, test {len(test)}")
    print(f"shrinkage (Ledoit-Wolf) {lw.shrinkage:.3f}; foreign sets: {len(foreign)}")
    head = ("false al.", "det. min", "det. mean", "mean/base")
    print(f"{'detector':30s} " + " ".join(f"{h:>9s}" for h in head))
    for name, row in rows.items():
        ratio = row["detection_mean"] / max(base["detection_mean"], 1e-9)
        print(
            f"{name:30s} {100 * row['false_alarm']:8.1f}% {100 * row['detection_min']:8.1f}%"
            f" {100 * row['detection_mean']:8.1f}% {ratio:9.3f}"
        )
    print("per foreign set (detection, %):")
    for env in foreign:
        cells = " ".join(f"{100 * rows[n][env]:6.1f}" for n in rows)
        print(f"  {env:24s} {cells}")
    print(f"wall {time.perf_counter() - t0:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"site": ref.name, "version": version, "rows": rows}))


if __name__ == "__main__":
    main()
