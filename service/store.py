"""The model store: one onnxruntime session per active site model, hot-swapped on change.

It reads the repository only through `ModelRepository` (the one reader of `models/`):
a site's active pointer names the version, `model.onnx` in that version's folder is the
model. A watcher thread polls the active pointers; when a site's active version
changes, the new session is loaded *beside* the old one and swapped in under a lock,
so requests never see a missing site while it is being replaced. A site whose active
version exists but is not loaded here yet answers 503 "loading", not 404.

A multi-BS site version (its manifest lists `base_stations`) has one `model.<bs>.onnx`
per base station; `ServedSite` then holds one session per BS (`predict_bs_scored`) and what
fusion needs from the manifest: each BS's validation RMSE (the sigma of MSE models) and
the covariance inflation fitted on validation.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from service import metrics
from service.errors import InvalidInput, SiteLoading, SiteNotFound, Unavailable
from training.consistency import FILE as CONSISTENCY_FILE
from training.consistency import Consistency, read_consistency
from training.data.schema import N_ANTENNAS
from training.fusion import (
    JOINT,
    JOINT_FILES,
    PRODUCT,
    inflation_for,
    joint_min_heard,
    set_key,
    sigma_from_rmse,
)
from training.fusion import METHODS as FUSION_METHODS
from training.novelty import FILE as NOVELTY_FILE
from training.novelty import (
    SINGLE_HEAD,
    NoveltyModel,
    channel_statistics,
    combine_scores,
    inflate_sigma,
    out_of_site,
    read_novelty,
    spatial_statistics,
)
from training.repository import NAME_PATTERN as SITE_ID
from training.repository import ModelRepository, RepositoryError

log = logging.getLogger("csipos.service.store")

INPUT_NAME = "csi"


def check_site_id(site: str) -> str:
    """Refuse ids outside the repository's pattern (also rules out path traversal)."""
    if not SITE_ID.fullmatch(site):
        raise InvalidInput(
            f"invalid site id {site!r}",
            {"expected": "lowercase letters, digits, '-' or '_', 1-63 chars: " + SITE_ID.pattern},
        )
    return site


class BsAnswer(NamedTuple):
    """One base station's answer for a batch (`ServedSite.predict_bs_scored`)."""

    position: np.ndarray
    sigma: np.ndarray | None
    score: np.ndarray | None
    """Its novelty score per fingerprint; None without per-BS detectors."""
    spatial: np.ndarray | None
    """The CSI's spatial statistic [B, A*A] for the cross-BS check; None without it."""


@dataclass
class ServedSite:
    """One site version as the service serves it: `load()`, `predict()`, `unload()`."""

    site: str
    version: str
    path: Path
    intra_op_threads: int = 1
    activated: str = ""
    """`active.json`'s `updated` stamp when this version was loaded."""
    loss: str = "mse"
    outputs: tuple[str, ...] = ()
    manifest: dict[str, Any] = field(default_factory=dict)
    novelty: NoveltyModel | None = None
    """Out-of-site detector (`training.novelty`); None for versions published without one."""
    base_stations: tuple[str, ...] = ()
    """Empty for a single-BS site; else the BS ids, in the manifest's order."""
    bs_rmse: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Validation RMSE per axis of each BS's model (multi-BS sites)."""
    inflation: float = 1.0
    """Covariance inflation of the fused estimate, fitted on validation (multi-BS sites);
    a set of BSs without its own factor (`inflation_by_set`) gets this one."""
    inflation_by_set: dict[str, float] = field(default_factory=dict)
    """The manifest's ``metrics.fusion.inflation_by_set``: one factor per set of BSs
    heard (`training.fusion.set_key`); empty for versions before it."""
    bs_novelty: dict[str, NoveltyModel] = field(default_factory=dict)
    """Out-of-site detector per base station of a multi-BS site (empty without)."""
    consistency: Consistency | None = None
    """The UE-level cross-BS detector of a multi-BS site (`training.consistency`); None
    for versions without one, or without per-BS detectors."""
    ue_scale: float = 1.0
    """What the median of a UE's BS scores is divided by (a single-BS site's: its head's
    score): the manifest's ``metrics.ue_novelty.scale``, fitted on the site's walks
    (`training.walk_alarm`); 1 for versions adapted without walks."""
    check_scale: float = 1.0
    """What the cross-BS check's score is divided by: ``metrics.ue_novelty.check_scale``,
    fitted on the walks too (1 without)."""
    fusion_method: str = PRODUCT
    """How the BSs' estimates are fused (`training.fusion.METHODS`): the manifest's
    ``metrics.fusion.method``, the product of Gaussians for versions without one."""
    label_spacing_m: float | None = None
    """The manifest's ``metrics.label_spacing_m``: how far apart the version's training
    labels lie, which sets the error length its UEs are tracked with
    (`training.tracking.TrackerConfig.for_site`); None for versions before it."""
    _session: ort.InferenceSession | None = None
    _sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)
    _joint: ort.InferenceSession | None = None
    """The joint head of a multi-BS version (`training.multibs`), None without one."""
    joint_subsets: bool = False
    """Whether the joint head answers for any 2+ of the BSs, the absent ones zero-filled
    (``metrics.fusion.joint.subsets``); older joint graphs need every BS."""

    @property
    def has_joint(self) -> bool:
        return self._joint is not None

    @property
    def has_sigma(self) -> bool:
        return "sigma" in self.outputs

    @property
    def loaded(self) -> bool:
        return self._session is not None or bool(self._sessions)

    @property
    def multi_bs(self) -> bool:
        return bool(self.base_stations)

    def _open(self, name: str) -> tuple[ort.InferenceSession, tuple[str, ...]]:
        """One ONNX session, checked against the site-model contract."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(self.path / name), opts, providers=["CPUExecutionProvider"]
        )
        inputs = [i.name for i in session.get_inputs()]
        outputs = tuple(o.name for o in session.get_outputs())
        if inputs != [INPUT_NAME] or "position" not in outputs:
            raise ValueError(
                f"{self.path / name}: expected input 'csi' and output 'position', "
                f"found inputs {inputs} and outputs {list(outputs)}"
            )
        return session, outputs

    def load(self) -> ServedSite:
        """Open the ONNX session(s) and check that they honour the site-model contract."""
        manifest_file = self.path / "manifest.json"
        self.manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
        stations = self.manifest.get("base_stations") or []
        spacing = (self.manifest.get("metrics") or {}).get("label_spacing_m")
        if spacing is not None and not _is_factor(spacing):
            raise ValueError(
                f"{self.path}: metrics.label_spacing_m {spacing!r}: expected a positive number"
            )
        self.label_spacing_m = None if spacing is None else float(spacing)
        if stations:
            return self._load_stations([str(bs) for bs in stations])
        session, outputs = self._open("model.onnx")
        meta = session.get_modelmeta().custom_metadata_map
        self.outputs = outputs
        self.loss = str(meta.get("csipos.loss") or self.manifest.get("loss") or "mse")
        self.novelty = self._load_novelty()
        self.ue_scale = self._ue_scale()
        self._session = session
        return self

    def _ue_scale(self, key: str = "scale") -> float:
        """``metrics.ue_novelty.<key>`` (1 without, or null): a version that would judge
        its UEs by a scale that is not a positive number is broken."""
        scale = ((self.manifest.get("metrics") or {}).get("ue_novelty") or {}).get(key)
        if scale is None:
            return 1.0
        if not _is_factor(scale):
            raise ValueError(
                f"{self.path}: metrics.ue_novelty.{key} {scale!r}: expected a positive number"
            )
        return float(scale)

    def _load_novelty(self) -> NoveltyModel | None:
        """The single head's novelty model when the version has one and the graph gives
        the features it scores (a broken file fails the load: the old version serves on)."""
        path = self.path / NOVELTY_FILE
        if not path.is_file():
            return None
        model = read_novelty(path.read_bytes(), f"{self.site}/{self.version}/{NOVELTY_FILE}")
        if "features" not in self.outputs or SINGLE_HEAD not in model:
            log.warning(
                "site %s %s: novelty model not usable, serving without", self.site, self.version
            )
            return None
        return model[SINGLE_HEAD]

    def _load_stations(self, stations: list[str]) -> ServedSite:
        sessions: dict[str, ort.InferenceSession] = {}
        outputs: set[tuple[str, ...]] = set()
        for bs in stations:
            session, outs = self._open(f"model.{bs}.onnx")
            sessions[bs] = session
            outputs.add(outs)
        if len(outputs) != 1:
            raise ValueError(f"{self.path}: the base stations' models differ in their outputs")
        self.outputs = outputs.pop()
        self.loss = str(self.manifest.get("loss") or "mse")
        metrics = self.manifest.get("metrics") or {}
        per_bs = metrics.get("bs") or {}
        for bs in stations:
            sigma = sigma_from_rmse(per_bs.get(bs) or {})
            if sigma is None and "sigma" not in self.outputs:
                raise ValueError(f"{self.path}: MSE model of {bs!r} has no validation rmse_x/y")
            if sigma is not None:
                self.bs_rmse[bs] = sigma
        fusion = metrics.get("fusion") or {}
        inflation = fusion.get("inflation", 1.0)
        if not _is_factor(inflation):
            raise ValueError(
                f"{self.path}: metrics.fusion.inflation {inflation!r}: expected a positive number"
            )
        self.inflation = float(inflation)
        self.inflation_by_set = self._sets(fusion.get("inflation_by_set") or {}, stations)
        method = fusion.get("method", PRODUCT)
        if method not in FUSION_METHODS:
            raise ValueError(f"{self.path}: unknown fusion method {method!r}")
        self.fusion_method = str(method)
        joint = None
        if fusion.get(JOINT) is not None:  # a manifest naming a joint head needs its graph
            joint, joint_outputs = self._open(JOINT_FILES[0])
            if "sigma" not in joint_outputs:
                raise ValueError(f"{self.path / JOINT_FILES[0]}: the joint head gives no sigma")
            width = joint.get_inputs()[0].shape[1]  # the BSs stacked on the antenna axis
            if width != N_ANTENNAS * len(stations):
                raise ValueError(
                    f"{self.path / JOINT_FILES[0]}: input of {width} antennas, expected "
                    f"{N_ANTENNAS} for each of the {len(stations)} base stations"
                )
        self.base_stations = tuple(stations)
        self.bs_novelty = self._load_bs_novelty(stations)
        self.consistency = self._load_consistency(stations) if self.bs_novelty else None
        self.ue_scale = self._ue_scale()
        self.check_scale = self._ue_scale("check_scale")
        self._sessions = sessions
        self._joint = joint
        self.joint_subsets = joint is not None and (fusion.get(JOINT) or {}).get("subsets") is True
        return self

    def _sets(self, by_set: Any, stations: list[str]) -> dict[str, float]:
        """``inflation_by_set`` checked: a positive factor for sets of this site's BSs (a
        version that would serve other ellipses than it was fitted with is broken; a
        factor below 1 is a set fitted to the coverage, `training.fusion.fit_inflation`)."""
        if not isinstance(by_set, dict) or not all(
            isinstance(key, str)
            and set_key(key.split("+"), stations) == key  # only this site's BSs, in order
            and _is_factor(v)
            for key, v in by_set.items()
        ):
            raise ValueError(
                f"{self.path}: metrics.fusion.inflation_by_set {by_set!r}: expected positive "
                f"factors keyed by sets of {stations} joined by '+'"
            )
        return {key: float(v) for key, v in by_set.items()}

    def inflation_for(self, heard: Sequence[str]) -> float:
        """The fused covariance's factor for a UE heard by ``heard`` (`inflation_by_set`,
        else `inflation`)."""
        return inflation_for(self.inflation_by_set, heard, self.base_stations, self.inflation)

    def _load_consistency(self, stations: list[str]) -> Consistency | None:
        """``consistency.npz`` when the version has one; one for other BSs than the
        manifest's (or unreadable) makes the version broken, as a bad ``novelty.npz`` does."""
        path = self.path / CONSISTENCY_FILE
        if not path.is_file():
            return None
        model = read_consistency(path.read_bytes(), f"{self.site}/{self.version}/{path.name}")
        if model.stations != tuple(stations):
            raise ValueError(
                f"{path}: detector for base stations {list(model.stations)}, the manifest "
                f"lists {stations}"
            )
        return model

    def ue_novelty(
        self,
        scores: np.ndarray,
        spatial: Mapping[str, np.ndarray],
        present: np.ndarray | None = None,
    ) -> np.ndarray:
        """Each UE's out-of-site score (above 1: out of site): the median over the BSs
        that heard it of their scores [K, B] (`training.novelty.combine_scores`) over
        `ue_scale`, or the cross-BS `consistency` score of their spatial statistics
        (`spatial`, per BS id [B, D], NaN rows where it did not hear) over `check_scale`,
        whichever is larger."""
        median = combine_scores(scores, present) / self.ue_scale
        if self.consistency is None:
            return median
        check = self.consistency.score(spatial) / self.check_scale
        return np.asarray(np.maximum(median, check))

    def _load_bs_novelty(self, stations: list[str]) -> dict[str, NoveltyModel]:
        """Every base station's novelty model, or none (the site then answers in_site
        null): a fused in_site from some BSs only would silently change its meaning."""
        path = self.path / NOVELTY_FILE
        if not path.is_file():
            return {}
        models = read_novelty(path.read_bytes(), f"{self.site}/{self.version}/{NOVELTY_FILE}")
        if "features" not in self.outputs or any(bs not in models for bs in stations):
            log.warning(
                "site %s %s: per-BS novelty models not usable, serving without",
                self.site,
                self.version,
            )
            return {}
        return {bs: models[bs] for bs in stations}

    def predict_bs_scored(self, bs: str, csi: np.ndarray) -> BsAnswer:
        """Base station `bs`'s positions and sigma for a batch, its novelty scores (None
        without per-BS detectors) and, with the cross-BS check, the spatial statistic it
        reads (computed once, for the detector's own part too). The sigma is the model's
        own: the site judges each UE (`ue_novelty`) and widens the fused covariance of one
        out of site (`novelty.inflate_cov`), so one BS's false alarm does not drop it from
        the fusion (the robust fusion down-weights a BS that disagrees with the others)."""
        session = self._sessions.get(bs)
        if session is None:
            raise Unavailable(f"site {self.site!r} version {self.version} has no model for {bs!r}")
        novelty = self.bs_novelty.get(bs)
        stats = None
        if self.consistency is not None:
            parts = novelty is not None and bool(novelty.parts)
            stats = channel_statistics(csi) if parts else {"spatial": spatial_statistics(csi)}
        position, sigma, score = self._run_scored(session, novelty, csi, False, stats)
        return BsAnswer(position, sigma, score, None if stats is None else stats["spatial"])

    def predict_joint(self, csi: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """The joint head's positions and sigma [B, 2] for CSI per BS (same UEs, rows
        aligned); None when the version has no joint head or it does not answer for the
        BSs heard: a subset head (`joint_subsets`) needs `JOINT_MIN_HEARD` of them, the
        absent ones sent as zeros; an older head needs every BS."""
        if self._joint is None:
            return None
        heard = [bs for bs in self.base_stations if bs in csi]
        need = joint_min_heard(len(self.base_stations), self.joint_subsets)
        if len(heard) < need:
            return None
        shape = csi[heard[0]].shape
        blocks = [
            csi[bs] if bs in csi else np.zeros(shape, dtype=np.float32) for bs in self.base_stations
        ]
        stacked = np.concatenate(blocks, axis=1)
        position, sigma = self._joint.run(["position", "sigma"], {INPUT_NAME: stacked})
        return np.asarray(position, dtype=np.float32), np.asarray(sigma, dtype=np.float32)

    @property
    def site_spread(self) -> np.ndarray | None:
        """Per-axis spread (std) of a multi-BS site's training positions, the least sigma
        of an out-of-site UE; None without per-BS detectors that carry it."""
        spreads = [m.site_sigma for m in self.bs_novelty.values() if m.inflates]
        if not spreads or len(spreads) != len(self.bs_novelty):
            return None
        return np.asarray(np.max(spreads, axis=0), dtype=np.float64)

    def predict(self, csi: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Positions [B,2] and sigma [B,2] (None for MSE models) in metres, one batch."""
        position, sigma, _ = self.predict_scored(csi)
        return position, sigma

    def predict_scored(
        self, csi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """`predict` plus each fingerprint's novelty (Mahalanobis distance / threshold;
        above 1 is out of site; None without a novelty model). An out-of-site
        fingerprint's sigma is raised to at least the site's position spread: the
        model's own sigma means nothing there (docs/architecture.md, "Out-of-site")."""
        session = self._session
        if session is None:
            if self._sessions:
                raise InvalidInput(
                    f"site {self.site!r} has {len(self._sessions)} base stations; send csi per "
                    "base station",
                    {"base_stations": list(self._sessions)},
                )
            raise Unavailable(f"site {self.site!r} version {self.version} is not loaded")
        return self._run_scored(session, self.novelty, csi, scale=self.ue_scale)

    def _run_scored(
        self,
        session: ort.InferenceSession,
        novelty: NoveltyModel | None,
        csi: np.ndarray,
        inflate: bool = True,
        stats: Mapping[str, np.ndarray] | None = None,
        scale: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One session's positions, sigma and novelty scores over ``scale`` (``stats``: the
        CSI's channel statistics, when already computed); with `inflate`, an out-of-site
        fingerprint's sigma raised to the site's spread (a multi-BS site widens the fused
        covariance of an out-of-site UE instead)."""
        names = ["position", "sigma"] if self.has_sigma else ["position"]
        if novelty is not None:
            names.append("features")
        result = session.run(names, {INPUT_NAME: csi})
        position = np.asarray(result[0], dtype=np.float32)
        sigma = np.asarray(result[1], dtype=np.float32) if self.has_sigma else None
        if novelty is None:
            return position, sigma, None
        score = novelty.score(result[-1], csi, stats) / scale
        if inflate and sigma is not None and novelty.inflates and out_of_site(score).any():
            sigma = inflate_sigma(sigma, score, novelty.site_sigma)
        return position, sigma, score

    def unload(self) -> None:
        """Drop the session(s); in-flight `predict` calls keep their own reference."""
        self._session = None
        self._sessions = {}
        self._joint = None
        self.joint_subsets = False


def _is_factor(value: Any) -> bool:
    """A covariance factor a manifest may hold: a positive finite number."""
    return isinstance(value, int | float) and math.isfinite(value) and value > 0.0


def _forget_info(old: ServedSite) -> None:
    if not metrics.EXPOSE_SITES:
        return
    metrics.MODEL_INFO.labels(old.site, old.version, old.loss).set(0)
    if not metrics.MULTIPROCESS:
        metrics.MODEL_INFO.remove(old.site, old.version, old.loss)


class ModelStore:
    """All active site models of one repository, kept in step with `active.json`."""

    def __init__(
        self,
        model_dir: Path,
        *,
        max_sites: int = 256,
        intra_op_threads: int = 1,
        watch_interval_s: float = 2.0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.repo = ModelRepository(self.model_dir)
        self.max_sites = max_sites
        self.intra_op_threads = intra_op_threads
        self.watch_interval_s = watch_interval_s
        self._sites: dict[str, ServedSite] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_change: Callable[[], None] | None = None

    def load(self) -> None:
        """Load every site's active version (errors are logged per site, not fatal)."""
        self.refresh()

    def refresh(self) -> None:
        """Bring the loaded sessions in line with the repository's active versions."""
        with self._refresh_lock:
            names = self.repo.list_sites()
            if len(names) > self.max_sites:
                log.warning("%d sites, serving the first %d", len(names), self.max_sites)
                names = names[: self.max_sites]
            wanted = {n: self._active(n) for n in names}
            for site in list(self._sites):
                if wanted.get(site) is None:
                    self._drop(site)
            for site, active in wanted.items():
                if active is not None:
                    self._ensure(site, *active)

    def refresh_site(self, site: str) -> None:
        """Re-read one site at once (after an activate or delete through this replica)."""
        with self._refresh_lock:
            active = self._active(site)
            if active is None:
                self._drop(site)
            else:
                self._ensure(site, *active)

    def _active(self, site: str) -> tuple[str, str] | None:
        try:
            return self.repo.active_pointer("site", site)
        except RepositoryError:
            return None

    def _ensure(self, site: str, version: str, activated: str = "") -> None:
        current = self._sites.get(site)
        if current is not None and (current.version, current.activated) == (version, activated):
            return
        if self._errors.get(site) == version:
            return  # already failed on this version; wait for another one
        try:
            served = ServedSite(
                site,
                version,
                self.repo.path("site", site, version),
                self.intra_op_threads,
                activated=activated,
            ).load()
        except Exception as exc:
            # The old version (if any) keeps serving: a broken publish must not take a site down.
            self._errors[site] = version
            log.error("site %s: cannot load version %s: %s", site, version, exc)
            return
        self._errors.pop(site, None)
        with self._lock:
            old = self._sites.get(site)
            self._sites[site] = served
        if old is not None:
            _forget_info(old)
            old.unload()
        if metrics.EXPOSE_SITES:
            metrics.MODEL_INFO.labels(site, version, served.loss).set(1)
        metrics.MODELS_LOADED.set(len(self._sites))
        log.info("site %s: serving version %s (%s)", site, version, served.loss)

    def _drop(self, site: str) -> None:
        with self._lock:
            old = self._sites.pop(site, None)
        self._errors.pop(site, None)
        if old is not None:
            _forget_info(old)
            old.unload()
            log.info("site %s: unloaded", site)
        metrics.MODELS_LOADED.set(len(self._sites))

    def get(self, site: str) -> ServedSite:
        """The served model of a site; 503 "loading" if its active version is not loaded
        here yet (published a moment ago, or still loading at start), else 404."""
        check_site_id(site)
        with self._lock:
            served = self._sites.get(site)
        if served is None:
            active = self._active(site)
            if active is not None and site not in self._errors:
                raise SiteLoading(
                    f"site {site!r} version {active[0]} is being loaded; retry shortly",
                    {"site": site, "version": active[0]},
                    retry_after=max(1, round(self.watch_interval_s)),
                )
            raise SiteNotFound(f"site {site!r} has no active model", {"site": site})
        return served

    def serves(self, site: str, version: str) -> bool:
        """Whether `version` of `site` is served here; loads it first if it is the active
        one and the watcher has not picked it up yet."""
        with self._lock:
            served = self._sites.get(site)
        if served is not None and served.version == version:
            return True
        active = self._active(site)
        if active is None or active[0] != version:
            return False
        self.refresh_site(site)
        with self._lock:
            served = self._sites.get(site)
        return served is not None and served.version == version

    def knows(self, site: str) -> bool:
        """Whether the site is loaded (bounds the metrics' `site` label)."""
        with self._lock:
            return site in self._sites

    def snapshot(self) -> dict[str, ServedSite]:
        """The sites served now."""
        with self._lock:
            return dict(self._sites)

    def start_watching(self) -> None:
        """Poll the repository every `watch_interval_s` in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="csipos-store-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_interval_s):
            try:
                self.refresh()
            except Exception:
                log.exception("model store refresh failed")

    def unload(self) -> None:
        """Stop watching and drop every session."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for site in list(self._sites):
            self._drop(site)
