"""The model repository (`models/`): versioned backbones and site models, written atomically.

Layout (docs/architecture.md, "Model repository")::

    <root>/backbones/<name>/versions/v<N>/{backbone.pt, manifest.json}
    <root>/backbones/<name>/active.json
    <root>/sites/<site>/versions/v<N>/{model.onnx, head.pt, backbone.pt, manifest.json}
    <root>/sites/<site>/versions/v<N>/{model.<bs>.onnx, head.<bs>.pt, backbone.<bs>.pt, ...}
                                           a multi-BS site: one model per base station,
                                           listed in the manifest's ``base_stations``
    <root>/sites/<site>/active.json        {"version": "v<N>", "updated": ISO time}
    <root>/repository.json                 {"default_backbone": name}  (optional)
    <root>/.locks/<kind>-<name>.lock       per-name publish lock (fcntl.flock)

Why it is built this way: the service reads the repository while training and
adaptation write to it, possibly from other processes or containers sharing
the volume. So every write goes to a hidden temp entry first, is fsynced, and
becomes visible by one ``rename``/``replace``; readers ignore hidden entries.
A crash at any point leaves the last good active version readable, and the
leftovers are removed by `ModelRepository.gc`. Publishing takes an exclusive
per-name ``flock`` so two processes publishing the same site get distinct
versions; the kernel drops the lock if a publisher dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal["backbone", "site"]
KINDS: tuple[Kind, ...] = ("backbone", "site")
_KIND_DIRS: dict[str, str] = {"backbone": "backbones", "site": "sites"}

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Site ids and backbone names: lower case, digits, ``_`` and ``-``; never a path."""

_VERSION_PATTERN = re.compile(r"^v([1-9][0-9]{0,8})$")
_FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
MANIFEST = "manifest.json"
ACTIVE = "active.json"
SETTINGS = "repository.json"
SEEDED = ".seeded.json"

FileSource = Mapping[str, Path | bytes] | Callable[[Path, str], None]
"""What a publish writes: file name -> source path or bytes, or a writer
``writer(directory, version)`` that creates the files in ``directory`` (it gets
the version so that e.g. ONNX metadata can carry it)."""


class RepositoryError(Exception):
    """Base of the repository's errors; ``code`` is a stable machine-readable id."""

    code = "repository_error"


class Invalid(RepositoryError, ValueError):  # noqa: N818 (names the service maps to HTTP)
    """An argument is malformed (a name, a version, a file name, a manifest field)."""

    code = "invalid"


class InvalidName(Invalid):
    """A site id, backbone name, version or file name does not match the allowed pattern."""

    code = "invalid_name"


class NotFound(RepositoryError, LookupError):  # noqa: N818 (names the service maps to HTTP)
    """The named backbone, site or version does not exist."""

    code = "not_found"


class LeaseLost(RepositoryError):  # noqa: N818 (names the service maps to HTTP)
    """A fenced publish was refused: its writer (a job) no longer owns its lease."""

    code = "lease_lost"


Fence = Callable[[], contextlib.AbstractContextManager[None]]
"""A check entered under the publish lock around the commit; it raises to refuse it."""


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid site id / backbone name, else raise `InvalidName`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidName(
            f"invalid {what} {name!r}: expected 1-63 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_kind(kind: str) -> Kind:
    """Return ``kind`` as a `Kind` ("backbone" or "site"), else raise `Invalid`."""
    if kind == "backbone":
        return "backbone"
    if kind == "site":
        return "site"
    raise Invalid(f"invalid kind {kind!r}: expected 'backbone' or 'site'")


def check_version(version: str) -> str:
    """Return ``version`` if it looks like ``v1``, ``v2``, ..., else raise `InvalidName`."""
    if not isinstance(version, str) or not _VERSION_PATTERN.fullmatch(version):
        raise InvalidName(f"invalid version {version!r}: expected 'v' and a number, e.g. 'v3'")
    return version


def version_number(version: str) -> int:
    """The number of a version string (``"v12"`` -> 12), for numeric ordering."""
    return int(check_version(version)[1:])


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split a reference ``"name"`` or ``"name:v3"`` into (name, version or None)."""
    name, sep, version = ref.partition(":")
    check_name(name)
    if sep:
        return name, check_version(version)
    return name, None


def csipos_version() -> str:
    """The installed csipos version, recorded in every manifest."""
    try:
        return metadata.version("csipos")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def utc_now() -> str:
    """Current UTC time as ISO 8601 with microseconds, e.g. ``2025-01-31T12:00:00.123456+00:00``.

    Microseconds, because readers tell activations apart by this stamp (a site deleted
    and published again within a second restarts at the same version).
    """
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _fsync(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes its renames durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _hash_and_sync(path: Path) -> dict[str, Any]:
    """fsync a written file and describe it for the manifest (size, sha256)."""
    digest = hashlib.sha256()
    with path.open("rb+") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        os.fsync(fh.fileno())
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix."""
    tmp = path.with_name(f"{_TEMP_PREFIX}{path.name}-{uuid.uuid4().hex}")
    try:
        _write_file_synced(tmp, data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _atomic_write_json(path: Path, obj: Mapping[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _json_safe(value: Mapping[str, Any] | None, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid(f"manifest field {field!r} must be a mapping, got {type(value).__name__}")
    try:
        out: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise Invalid(
            f"manifest field {field!r} must be JSON-serialisable with finite numbers: {exc}"
        ) from exc
    return out


class ModelRepository:
    """Versioned, atomically written store of backbones and site models under ``root``.

    ``fence``, if given, is entered under the publish lock around each publish's commit
    (the rename into ``versions/`` and the activation); it raises (e.g. `LeaseLost`) to
    refuse the publish. A service job passes its lease check here, so a job that was
    declared dead while it trained can never publish.
    """

    def __init__(self, root: str | os.PathLike[str], *, fence: Fence | None = None) -> None:
        self.root = Path(root)
        self._fence = fence

    # ------------------------------------------------------------------ paths
    def _name_dir(self, kind: str, name: str) -> Path:
        kind = check_kind(kind)
        return self.root / _KIND_DIRS[kind] / check_name(name, f"{kind} name")

    def _versions(self, kind: str, name: str) -> list[str]:
        vdir = self._name_dir(kind, name) / "versions"
        try:
            entries = [e.name for e in vdir.iterdir() if e.is_dir()]
        except FileNotFoundError:
            return []
        found = [e for e in entries if _VERSION_PATTERN.fullmatch(e)]
        return sorted(found, key=version_number)

    def _names(self, kind: Kind) -> list[str]:
        base = self.root / _KIND_DIRS[kind]
        try:
            entries = sorted(e.name for e in base.iterdir() if e.is_dir())
        except FileNotFoundError:
            return []
        return [e for e in entries if NAME_PATTERN.fullmatch(e) and self._versions(kind, e)]

    @contextlib.contextmanager
    def _lock(self, kind: Kind, name: str) -> Iterator[None]:
        """Exclusive per-name lock; lives outside the name's folder so it survives deletes."""
        check_name(name, f"{kind} name")
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{kind}-{name}.lock").open("a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ---------------------------------------------------------------- reading
    def list_backbones(self) -> list[str]:
        """Names of the backbones that have at least one version, sorted."""
        return self._names("backbone")

    def list_sites(self) -> list[str]:
        """Ids of the sites that have at least one version, sorted."""
        return self._names("site")

    def versions(self, kind: str, name: str) -> list[str]:
        """All versions of a backbone or site in numeric order (``[]`` if it does not exist)."""
        return self._versions(kind, name)

    def site_versions(self, site: str) -> list[str]:
        """All versions of ``site`` in numeric order (``[]`` if the site does not exist)."""
        return self._versions("site", site)

    def active_version(self, kind: str, name: str) -> str | None:
        """The active version of a backbone or site, or None if none is active."""
        path = self._name_dir(kind, name) / ACTIVE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"{path}: unreadable active pointer: {exc}") from exc
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str) or not _VERSION_PATTERN.fullmatch(version):
            raise RepositoryError(f"{path}: malformed active pointer {data!r}")
        return version

    def active_pointer(self, kind: str, name: str) -> tuple[str, str] | None:
        """(active version, its ``updated`` stamp), or None if none is active or the
        pointer is unreadable (readers such as the service poll this and must not fail).

        The stamp tells a name that was deleted and published again (its versions
        restart at v1) from the one a reader already loaded.
        """
        path = self._name_dir(kind, name) / ACTIVE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("unreadable %s: %s", path, exc)
            return None
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(version, str) or not _VERSION_PATTERN.fullmatch(version):
            return None
        return version, str(data.get("updated", ""))

    def resolve(self, kind: str, name: str, version: str | None = None) -> str:
        """``version`` if it exists, or the active version when None; else raise `NotFound`."""
        kind = check_kind(kind)
        if version is None:
            active = self.active_version(kind, name)
            if active is None:
                known = self._versions(kind, name)
                if not known:
                    raise NotFound(f"{kind} {name!r} does not exist in {self.root}")
                raise NotFound(
                    f"{kind} {name!r} has no active version (versions: {', '.join(known)})"
                )
            version = active
        check_version(version)
        if not (self._name_dir(kind, name) / "versions" / version).is_dir():
            known = self._versions(kind, name)
            if not known:
                raise NotFound(f"{kind} {name!r} does not exist in {self.root}")
            raise NotFound(
                f"{kind} {name!r} has no version {version!r} (versions: {', '.join(known)})"
            )
        return version

    def path(self, kind: str, name: str, version: str | None = None) -> Path:
        """Folder of one published version (the active one when ``version`` is None)."""
        version = self.resolve(kind, name, version)
        return self._name_dir(kind, name) / "versions" / version

    def manifest(self, kind: str, name: str, version: str | None = None) -> dict[str, Any]:
        """The manifest of one published version (the active one when ``version`` is None)."""
        path = self.path(kind, name, version) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"{path}: unreadable manifest: {exc}") from exc
        if not isinstance(data, dict):
            raise RepositoryError(f"{path}: manifest is not a JSON object")
        return data

    def default_backbone(self) -> str:
        """The backbone new sites adapt from: ``default_backbone`` in repository.json, or the
        only backbone there is. Raises `NotFound` when there is none or the choice is ambiguous.
        """
        settings = self.root / SETTINGS
        if settings.exists():
            try:
                name = json.loads(settings.read_text()).get("default_backbone")
            except (OSError, ValueError, AttributeError) as exc:
                raise RepositoryError(f"{settings}: unreadable repository settings: {exc}") from exc
            if name is not None:
                check_name(name, "default_backbone")
                if name not in self.list_backbones():
                    raise NotFound(f"{settings}: default_backbone {name!r} does not exist")
                return str(name)
        backbones = self.list_backbones()
        if len(backbones) == 1:
            return backbones[0]
        if not backbones:
            raise NotFound(f"no backbone in {self.root}: train one first (csipos train meml)")
        raise NotFound(
            f"{len(backbones)} backbones ({', '.join(backbones)}) and no default_backbone in "
            f"{settings}: name one explicitly or set the default"
        )

    def set_default_backbone(self, name: str) -> None:
        """Record ``name`` (an existing backbone) as the default in repository.json."""
        check_name(name, "backbone name")
        if name not in self.list_backbones():
            raise NotFound(f"backbone {name!r} does not exist in {self.root}")
        settings = self.root / SETTINGS
        current: dict[str, Any] = {}
        if settings.exists():
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(settings.read_text())
                if isinstance(loaded, dict):
                    current = loaded
        current["default_backbone"] = name
        _atomic_write_json(settings, current)

    # ---------------------------------------------------------------- writing
    def publish_backbone(
        self,
        name: str,
        files: FileSource,
        *,
        loss: str,
        config: Mapping[str, Any] | None = None,
        data_fingerprint: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        parent: tuple[str, str] | None = None,
        activate: bool = True,
    ) -> str:
        """Publish a new backbone version; returns it (``v1``, ``v2``, ...)."""
        return self._publish(
            "backbone", name, files, loss, config, data_fingerprint, metrics, parent, activate
        )

    def publish_site(
        self,
        site: str,
        files: FileSource,
        *,
        loss: str,
        parent: tuple[str, str] | None,
        config: Mapping[str, Any] | None = None,
        data_fingerprint: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        activate: bool = True,
        base_stations: Sequence[str] | None = None,
    ) -> str:
        """Publish a new site version; ``parent`` is the (backbone, version) it was trained from.

        ``base_stations`` (a multi-BS site) goes into the manifest: the service then loads
        ``model.<bs>.onnx`` per BS instead of ``model.onnx``.
        """
        extra = None if base_stations is None else {"base_stations": list(base_stations)}
        return self._publish(
            "site", site, files, loss, config, data_fingerprint, metrics, parent, activate, extra
        )

    def _publish(
        self,
        kind: Kind,
        name: str,
        files: FileSource,
        loss: str,
        config: Mapping[str, Any] | None,
        data_fingerprint: str | None,
        metrics: Mapping[str, Any] | None,
        parent: tuple[str, str] | None,
        activate: bool,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        name_dir = self._name_dir(kind, name)
        if loss not in ("mse", "nll"):
            raise Invalid(f"invalid loss {loss!r}: expected 'mse' or 'nll'")
        parent_entry: dict[str, str] | None = None
        if parent is not None:
            p_name, p_version = parent
            parent_entry = {
                "backbone": check_name(p_name, "parent backbone name"),
                "version": check_version(p_version),
            }
        if data_fingerprint is not None and not isinstance(data_fingerprint, str):
            raise Invalid("data_fingerprint must be a string (sha256 hex) or None")
        config_entry = _json_safe(config, "config")
        metrics_entry = _json_safe(metrics, "metrics")
        if not callable(files):
            for fname in files:
                self._check_file_name(fname)

        with self._lock(kind, name):
            versions_dir = name_dir / "versions"
            if not versions_dir.is_dir():
                versions_dir.mkdir(parents=True)
                # Make the new folders themselves durable, not only their content.
                _fsync(name_dir.parent)
                _fsync(name_dir)
            known = self._versions(kind, name)
            version = f"v{version_number(known[-1]) + 1 if known else 1}"
            tmp = name_dir / f"{_TEMP_PREFIX}{version}-{uuid.uuid4().hex}"
            tmp.mkdir()
            try:
                described = self._fill(tmp, files, version)
                manifest = {
                    "kind": kind,
                    "name": name,
                    "version": version,
                    "created": utc_now(),
                    "parent": parent_entry,
                    "loss": loss,
                    "config": config_entry,
                    "data_fingerprint": data_fingerprint,
                    "metrics": metrics_entry,
                    "files": described,
                    "csipos_version": csipos_version(),
                    **_json_safe(extra, "manifest"),
                }
                text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
                _write_file_synced(tmp / MANIFEST, text.encode())
                _fsync(tmp)
                with self._fence() if self._fence else contextlib.nullcontext():
                    tmp.rename(versions_dir / version)
                    _fsync(versions_dir)
                    if activate:
                        self._write_active(name_dir, version)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        log.info("published %s %s %s%s", kind, name, version, " (active)" if activate else "")
        return version

    @staticmethod
    def _check_file_name(fname: str) -> None:
        if not isinstance(fname, str) or not _FILE_PATTERN.fullmatch(fname) or fname == MANIFEST:
            raise InvalidName(
                f"invalid file name {fname!r}: expected a plain name of letters, digits, "
                f"'.', '_' or '-' (and not {MANIFEST!r}, which the repository writes)"
            )

    def _fill(self, tmp: Path, files: FileSource, version: str) -> dict[str, Any]:
        """Put the files into the temp folder, fsync them, and describe them for the manifest."""
        if callable(files):
            files(tmp, version)
        else:
            for fname, source in files.items():
                target = tmp / fname
                if isinstance(source, bytes | bytearray):
                    target.write_bytes(bytes(source))
                elif isinstance(source, Path | str):
                    src = Path(source)
                    if not src.is_file():
                        raise Invalid(f"file to publish {src} does not exist or is not a file")
                    shutil.copyfile(src, target)
                else:
                    raise Invalid(
                        f"file {fname!r}: expected a Path or bytes, got {type(source).__name__}"
                    )
        described: dict[str, Any] = {}
        for entry in sorted(tmp.iterdir()):
            if entry.name == MANIFEST:
                raise InvalidName(f"a writer may not create {MANIFEST!r}; the repository writes it")
            if not entry.is_file() or entry.is_symlink():
                raise Invalid(f"published entries must be plain files, {entry.name!r} is not")
            self._check_file_name(entry.name)
            described[entry.name] = _hash_and_sync(entry)
        if not described:
            raise Invalid("nothing to publish: no files were given or written")
        return described

    def _write_active(self, name_dir: Path, version: str) -> None:
        _atomic_write_json(name_dir / ACTIVE, {"version": version, "updated": utc_now()})

    def activate(self, kind: str, name: str, version: str) -> None:
        """Make ``version`` the active one (also rollback); refuses versions that do not exist."""
        kind = check_kind(kind)
        check_version(version)
        with self._lock(kind, name):
            self.resolve(kind, name, version)
            self._write_active(self._name_dir(kind, name), version)
        log.info("activated %s %s %s", kind, name, version)

    def delete_site(self, site: str) -> None:
        """Remove a site and all its versions: first renamed aside (atomic), then deleted."""
        site_dir = self._name_dir("site", site)
        with self._lock("site", site):
            if not site_dir.is_dir():
                raise NotFound(f"site {site!r} does not exist in {self.root}")
            trash = site_dir.parent / f"{_TRASH_PREFIX}{site}-{uuid.uuid4().hex}"
            site_dir.rename(trash)
            _fsync(site_dir.parent)
        shutil.rmtree(trash, ignore_errors=True)
        log.info("deleted site %s", site)

    def seed(self, source: str | os.PathLike[str]) -> list[str]:
        """Copy in the backbones and sites of the repository at ``source`` that this one lacks.

        Why: a deployment's model volume starts empty, and several api replicas and
        workers start on it at once, each seeding it with the models baked into its
        image. Each name is copied to a hidden temp folder and made visible by one
        ``rename``, which fails if another seeder got there first, so concurrent
        seeders never clash and readers never see half a model. The marker
        ``.seeded.json``, written last, makes this a one-time step: later starts keep
        what operators deleted, and a seed that crashed part-way resumes on the next.
        ``repository.json`` is copied when this repository has none. Returns the
        ``kind/name`` entries this call copied.
        """
        src = ModelRepository(source)
        if not src.root.is_dir():
            raise NotFound(f"seed source {src.root} is not a directory")
        if src.root.resolve() == self.root.resolve():
            raise Invalid(f"seed source {src.root} is this repository")
        marker = self.root / SEEDED
        if marker.exists():
            return []
        self.root.mkdir(parents=True, exist_ok=True)
        copied: list[str] = []
        for kind in KINDS:
            for name in src._names(kind):
                if self._copy_name_in(src._name_dir(kind, name), self._name_dir(kind, name)):
                    copied.append(f"{kind}/{name}")
        if (src.root / SETTINGS).is_file() and not (self.root / SETTINGS).exists():
            atomic_write_bytes(self.root / SETTINGS, (src.root / SETTINGS).read_bytes())
        if copied or not marker.exists():  # a seeder that found all in place keeps the record
            _atomic_write_json(
                marker, {"source": str(src.root), "seeded": utc_now(), "copied": copied}
            )
        if copied:
            log.info("seeded %s from %s: %s", self.root, src.root, ", ".join(copied))
        return copied

    @staticmethod
    def _copy_name_in(source: Path, target: Path) -> bool:
        """Copy one backbone or site folder in, atomically; False if ``target`` exists."""
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f"{_TEMP_PREFIX}seed-{target.name}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(".*"))
            for path in [*tmp.rglob("*"), tmp]:
                # The copy is ours to publish into, even from a read-only source.
                path.chmod(path.stat().st_mode | (0o700 if path.is_dir() else 0o600))
                _fsync(path)
            tmp.rename(target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and target.exists():
                return False  # another seeder made it visible first
            raise
        _fsync(target.parent)
        return True

    def gc(self, max_age_s: float = 3600.0) -> list[Path]:
        """Remove leftovers of crashed writes (temp and trash entries) older than ``max_age_s``.

        The age guard keeps gc from removing a publish that is still running in
        another process; a crashed publish's temp is never visible to readers, so
        waiting costs only disk space. Returns the removed paths.
        """
        if max_age_s < 0:
            raise Invalid(f"max_age_s must be >= 0, got {max_age_s}")
        now = time.time()
        candidates: list[Path] = []
        for kind_dir in (self.root / d for d in _KIND_DIRS.values()):
            if not kind_dir.is_dir():
                continue
            for entry in kind_dir.iterdir():
                if entry.name.startswith((_TRASH_PREFIX, _TEMP_PREFIX)):
                    candidates.append(entry)
                elif entry.is_dir():
                    candidates.extend(
                        e
                        for e in entry.iterdir()
                        if e.name.startswith(_TEMP_PREFIX) or e.name.startswith(_TRASH_PREFIX)
                    )
        candidates.extend(self.root.glob(f"{_TEMP_PREFIX}*"))
        removed: list[Path] = []
        for path in candidates:
            try:
                if now - path.lstat().st_mtime < max_age_s:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("gc could not remove %s: %s", path, exc)
                continue
            removed.append(path)
        if removed:
            log.info("gc removed %d stale entries", len(removed))
        return removed
