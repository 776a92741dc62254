"""Site management over the model repository (list, inspect, activate, delete).

`training.repository` does the atomic writes; this module maps its errors onto the
service's and tells this replica's store at once (other replicas notice by polling).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from service.errors import BadRequest, InvalidInput, ServiceError, SiteNotFound
from service.store import ModelStore, check_site_id
from training import repository as repo_mod
from training.repository import ModelRepository

T = TypeVar("T")


def _public(exc: Exception, root: Path) -> str:
    """The error's message without the repository's filesystem location."""
    text = str(exc)
    for where in {str(root), str(root.resolve())}:
        text = text.replace(f" in {where}", "").replace(where, "<models>")
    return text


@contextmanager
def repository_errors(site: str, root: Path) -> Iterator[None]:
    """Translate repository errors into HTTP-carrying service errors (no paths in them)."""
    try:
        yield
    except repo_mod.InvalidName as exc:
        raise InvalidInput(_public(exc, root), {"site": site}) from None
    except repo_mod.NotFound as exc:
        raise SiteNotFound(_public(exc, root), {"site": site}) from None
    except repo_mod.Invalid as exc:
        raise BadRequest(_public(exc, root), {"site": site}) from None
    except repo_mod.RepositoryError as exc:
        raise ServiceError(_public(exc, root), {"site": site}) from None


def _version_summary(repo: ModelRepository, site: str, version: str) -> dict[str, Any]:
    try:
        m = repo.manifest("site", site, version)
    except repo_mod.RepositoryError:
        return {"version": version, "error": "unreadable manifest"}
    config = m.get("config") or {}
    return {
        "version": version,
        "created": m.get("created"),
        "loss": m.get("loss"),
        "parent": m.get("parent"),
        "metrics": m.get("metrics", {}),
        "data_fingerprint": m.get("data_fingerprint"),
        "base_stations": m.get("base_stations"),
        # How the version was trained: the asked mode, what `auto` chose and why, every
        # candidate's validation score, and whether the run was degenerate.
        "training": {k: config.get(k) for k in _TRAINING_KEYS if k in config},
    }


_TRAINING_KEYS = (
    "mode",
    "chosen_mode",
    "choice_reason",
    "candidates",
    "degenerate",
    "retried",
    "steps_run",
    "train_samples",
    "val_samples",
    "torch_threads",
    "unlabelled_samples",
    "unlabelled_tracks",
    "track_pairs",
    "found_pairs",
    "track_weight",
    "unlabelled_choice",
)


class Catalog:
    """Read and change which site versions exist and which one serves."""

    def __init__(self, repo: ModelRepository, store: ModelStore) -> None:
        self.repo = repo
        self.store = store

    def _call(self, site: str, fn: Callable[[], T]) -> T:
        with repository_errors(site, self.repo.root):
            return fn()

    def list(self) -> list[dict[str, Any]]:
        served = self.store.snapshot()
        out = []
        for site in self.repo.list_sites():
            with repository_errors(site, self.repo.root):
                active = self.repo.active_version("site", site)
            s = served.get(site)
            out.append(
                {
                    "site": site,
                    "active_version": active,
                    "serving_version": s.version if s else None,
                    "loss": s.loss if s else None,
                    "versions": len(self.repo.site_versions(site)),
                }
            )
        return out

    def detail(self, site: str) -> dict[str, Any]:
        check_site_id(site)
        versions = self._call(site, lambda: self.repo.site_versions(site))
        if not versions:
            raise SiteNotFound(f"site {site!r} does not exist", {"site": site})
        active = self._call(site, lambda: self.repo.active_version("site", site))
        s = self.store.snapshot().get(site)
        return {
            "site": site,
            "active_version": active,
            "serving_version": s.version if s else None,
            "sigma_available": s.has_sigma if s else None,
            "base_stations": list(s.base_stations) if s and s.multi_bs else None,
            "versions": [_version_summary(self.repo, site, v) for v in versions],
        }

    def activate(self, site: str, version: str) -> dict[str, Any]:
        check_site_id(site)
        self._call(site, lambda: self.repo.activate("site", site, version))
        self.store.refresh_site(site)
        return self.detail(site)

    def delete(self, site: str) -> None:
        check_site_id(site)
        self._call(site, lambda: self.repo.delete_site(site))
        self.store.refresh_site(site)
