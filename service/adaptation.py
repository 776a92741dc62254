"""The service side of adaptation: options, upload parsing, validation and the busy-site
rule, so that `POST /sites/{id}/adapt` is a thin transport.

An upload is untrusted HDF5, so it is inspected before a byte of data is read:
external storage, external links and virtual datasets (which read other files, even
server files such as /dev/zero), unknown filters and oversized chunks are refused with
a 422 that names the dataset; the sample count and the decoded size are capped (413)
from the shapes alone. The data are then read, validated and copied in small batches
into a compressed HDF5 file for the job, so the peak memory does not grow with the
upload (a 1.4 MB gzip file can hold 200k fingerprints, 1.3 GB decoded).

A multi-BS upload (`training.data.site`) is one file whose environments are the base
stations of the site: the environments directly inside one group, each with a
`sample_id`, or any group named by the `env` field. It is joined, checked and written
as the group `JOB_SITE_GROUP` of the job's file; the job then adapts one model per BS.

Unlabelled tracks (`training.data.unlabelled`: groups with the attribute
``unlabelled=True`` holding ``csi``, ``time`` and ``track``, or ``csi`` alone for
fingerprints without tracks) may ride in the same file
beside a single-BS upload, or come as the ``unlabelled`` member of a JSON body. They are
size-checked, validated (time strictly increasing within each track, the CSI's shape)
and copied as the group `JOB_UNLABELLED_GROUP`; the job passes them to the trainer, which
records how many it used in the manifest. Beside a multi-BS upload each unlabelled group
is named by the BS that saw it (``walks/bs0``, ``walks/bs1``: the last part of the name,
as the labelled environments are) and copied as ``JOB_UNLABELLED_GROUP/<bs>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import h5py
import numpy as np
from pydantic import BaseModel, Field, ValidationError

from service.errors import InvalidInput, PayloadTooLarge, ServiceError, StorageFull
from training.config import AUGMENT_MAX_COPIES, REF_PATTERN, TargetMode, TrainConfig
from training.data.fingerprints import (
    EnvironmentMeta,
    EnvironmentWriter,
    Fingerprints,
    LazyEnvironment,
    list_environments,
)
from training.data.schema import SchemaError
from training.data.site import SiteFingerprints, has_sample_ids, read_site, site_groups, write_site
from training.data.unlabelled import (
    UnlabelledTracks,
    join_recordings,
    list_unlabelled,
    load_unlabelled,
    read_unlabelled,
    recording_of,
    write_unlabelled,
)

if TYPE_CHECKING:
    from starlette.requests import Request

    from service.config import Settings
    from service.jobs.manager import JobManager
    from service.jobs.records import JobRecord

JOB_DATA_ENV = "data"
"""The environment (group) name of a job's training data file."""
JOB_SITE_GROUP = "site"
"""The group of a multi-BS job's data file: one environment per base station inside it."""
JOB_UNLABELLED_GROUP = "unlabelled"
"""The group of a job's data file holding the upload's unlabelled tracks (all joined)."""

_ALLOWED_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "gzip",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
    32000: "lzf",
}
_MAX_CHUNK_BYTES = 16 * 1024 * 1024
"""A chunk is inflated whole to read any row of it: this bounds that one allocation."""
_COPY_BATCH = 1024
"""Samples per batch of the validating copy (~6.7 MB of CSI)."""
_READ_CACHE_BYTES = 8 * 1024 * 1024


class AdaptOptions(BaseModel):
    """What the adaptation should do (the request's options); validated here only."""

    mode: TargetMode = "auto"
    """auto (trains finetune and head, below 500 labels gradual, and from 2,000 labels
    scratch and fresh-dense, a fresh `dense` layer, too; keeps the best on validation; at
    a multi-BS site finetune, gradual and head for every BS, one mode for all, the best
    fused), finetune, gradual, gradual-paper or head
    (see `training.transfer`, `training.multibs`)."""
    loss: Literal["nll", "mse"] = "nll"
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    seed: int = Field(0, ge=0)
    activate: bool = True
    backbone: str | None = Field(None, pattern=REF_PATTERN.pattern)
    """A backbone `name` (its active version) or `name:vN`; unset: the default backbone."""
    calibrate_sigma: bool = True
    """nll: scale sigma to fit the validation errors after training (`training.calibration`)."""
    augment_copies: int = Field(TrainConfig().augment_copies, ge=0, le=AUGMENT_MAX_COPIES)
    """Perturbed copies of each labelled training fingerprint trained on beside it
    (`training.augment`: noise, a gain and phase error per antenna); 0: off. Sites with
    1,000 labels or more train without them (`TrainConfig.augment_max_labels`); below,
    3 lower the error at 500 labels ~12 %, for about the same training time (the step
    budget counts passes over the labels, not the copies)."""


def parse_options(raw: dict[str, Any]) -> AdaptOptions:
    """The request's options, or 422 naming each bad field."""
    try:
        return AdaptOptions.model_validate(raw)
    except ValidationError as exc:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise InvalidInput("invalid adaptation options", detail) from None


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may hold (from the settings)."""

    min_samples: int
    max_samples: int
    max_decoded_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> UploadLimits:
        return cls(
            settings.min_adapt_samples,
            settings.max_adapt_samples,
            settings.max_upload_decoded_bytes,
        )


@dataclass(frozen=True)
class PreparedData:
    """A job's validated training data, a compressed HDF5 file ready to hand to a job."""

    path: Path
    samples: int
    unlabelled: int = 0
    """Unlabelled track samples copied beside the labelled data."""


def _schema_error(exc: SchemaError, source: str) -> InvalidInput:
    # The message names "upload", never the server's temp path.
    return InvalidInput(
        f"{source}: group '{exc.group}', field '{exc.field}': {exc.problem}",
        {"group": exc.group, "field": exc.field, "problem": exc.problem},
    )


def _unreadable(exc: BaseException, path: Path, dataset: str | None = None) -> InvalidInput:
    reason = str(exc).replace(str(path), "upload").replace(str(path.parent), "<uploads>")
    reason = reason or type(exc).__name__
    where = f" (dataset {dataset!r})" if dataset else ""
    return InvalidInput(
        f"upload is not a readable HDF5 fingerprint file{where}",
        {"reason": reason, "dataset": dataset},
    )


def _refuse(name: str, problem: str) -> InvalidInput:
    return InvalidInput(
        f"upload: dataset '{name}': {problem}", {"dataset": name, "problem": problem}
    )


def _check_dataset(name: str, dset: h5py.Dataset) -> None:
    """Refuse what reads outside the file or inflates without bound."""
    if dset.external:
        raise _refuse(name, "external storage (data in other files) is not accepted")
    if dset.is_virtual:
        raise _refuse(name, "virtual datasets (data in other files) are not accepted")
    plist = dset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in _ALLOWED_FILTERS:
            raise _refuse(
                name,
                f"filter {code} is not accepted; use one of {sorted(_ALLOWED_FILTERS.values())}",
            )
    if dset.chunks is not None:
        chunk_bytes = math.prod(dset.chunks) * dset.dtype.itemsize
        if chunk_bytes > _MAX_CHUNK_BYTES:
            raise _refuse(
                name, f"chunks of {chunk_bytes} bytes; at most {_MAX_CHUNK_BYTES} are accepted"
            )


def inspect_h5(path: Path) -> None:
    """Check every link and dataset of an uploaded file before any data is read."""
    try:
        with h5py.File(path, "r") as f:
            links: list[tuple[str, Any]] = []
            f.visititems_links(lambda name, link: links.append((name, link)))
            for name, link in links:
                if isinstance(link, h5py.ExternalLink):
                    raise _refuse(name, "external links (to other files) are not accepted")
            datasets: list[tuple[str, h5py.Dataset]] = []
            for name, link in links:
                if isinstance(link, h5py.HardLink):
                    obj = f.get(name)
                    if isinstance(obj, h5py.Dataset):
                        datasets.append((name, obj))
            for name, dset in datasets:
                _check_dataset(name, dset)
    except ServiceError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, UnicodeDecodeError) as exc:
        raise _unreadable(exc, path) from None


def _check_size(lazy: LazyEnvironment, env: str, limits: UploadLimits) -> None:
    n = len(lazy)
    if n > limits.max_samples:
        raise PayloadTooLarge(
            f"upload holds {n} fingerprints; at most {limits.max_samples} are accepted",
            {"max_samples": limits.max_samples, "got": n},
        )
    decoded = 0
    group = lazy._handle()[env]
    for name in ("csi", "pos", "los", "snr_db", "sample_id"):
        if name in group:
            dset = group[name]
            decoded += math.prod(dset.shape) * dset.dtype.itemsize
    if decoded > limits.max_decoded_bytes:
        raise PayloadTooLarge(
            f"upload decodes to {decoded} bytes; at most {limits.max_decoded_bytes} are accepted",
            {"max_decoded_bytes": limits.max_decoded_bytes, "got": decoded},
        )
    if n < limits.min_samples:
        raise InvalidInput(
            f"{n} labelled fingerprints; adaptation needs at least {limits.min_samples}",
            {"min_samples": limits.min_samples, "got": n},
        )


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "No space" in str(exc):
            raise StorageFull("no space left for the job's data; retry later") from None
        raise


@contextlib.contextmanager
def _job_data(out: Path, path: Path, dataset: str) -> Iterator[None]:
    """Writing a job's copy of an upload: any failure removes the partial copy, and what
    the upload got wrong becomes a 422 naming ``dataset``."""
    try:
        yield
    except SchemaError as exc:
        out.unlink(missing_ok=True)
        raise _schema_error(exc, "upload") from None
    except ServiceError:
        out.unlink(missing_ok=True)
        raise
    except (OSError, ValueError, KeyError, RuntimeError, UnicodeDecodeError) as exc:
        out.unlink(missing_ok=True)
        raise _unreadable(exc, path, dataset) from None
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def _new_data_file(directory: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=".job-data-", suffix=".h5", dir=directory)
    os.close(fd)
    path = Path(name)
    path.unlink()  # EnvironmentWriter creates the file with the schema's root attributes
    return path


def prepare_h5(path: Path, env: str | None, limits: UploadLimits, directory: Path) -> PreparedData:
    """Inspect, size-check, then validate and copy an uploaded file in batches."""
    inspect_h5(path)
    try:
        envs = list_environments(path)
        unlabelled = list_unlabelled(path)
    except SchemaError as exc:
        raise _schema_error(exc, "upload") from None
    except (OSError, ValueError, KeyError, RuntimeError, UnicodeDecodeError) as exc:
        raise _unreadable(exc, path) from None
    site_group = _site_group(path, envs, env)
    if site_group is not None:
        bs_ids = [e.rpartition("/")[2] for e in envs if e.rpartition("/")[0] == site_group]
        walks = _unlabelled_by_bs(unlabelled, bs_ids)
        _check_unlabelled_size(path, unlabelled, limits)  # before copying anything
        try:
            prepared, metas = _prepare_site(path, site_group, limits, directory)
        except InvalidInput as exc:
            if env is not None:
                raise
            # Guessed, not asked for: say what else the upload could have meant.
            raise InvalidInput(
                f"upload holds {len(envs)} environments that do not join as the base "
                f"stations of one site ({exc.message}); name one with the 'env' field",
                {"environments": envs, "site": exc.detail},
            ) from None
        if not walks:
            return prepared
        # outside the guess above: a bad walks group is its own 422, not "do not join"
        with _job_data(prepared.path, path, next(iter(walks.values()))[0]):
            copied = _copy_site_unlabelled(path, walks, metas, prepared.path)
        return dataclasses.replace(prepared, unlabelled=copied)
    if env is None:
        if len(envs) != 1:
            raise InvalidInput(
                f"upload holds {len(envs)} environments; name one with the 'env' field "
                "(or give each a sample_id to upload them as the base stations of one site)",
                {"environments": envs},
            )
        env = envs[0]
    if env not in envs:
        raise InvalidInput(f"no environment {env!r} in the upload", {"environments": envs})
    _check_unlabelled_size(path, unlabelled, limits)  # before copying anything
    out = _new_data_file(directory)
    with (
        _job_data(out, path, f"{env}/csi"),
        LazyEnvironment(path, env, cache_bytes=_READ_CACHE_BYTES) as lazy,
    ):
        _check_size(lazy, env, limits)
        with _storage_errors(), EnvironmentWriter(out, JOB_DATA_ENV, lazy.meta) as writer:
            for batch in lazy.iter_batches(_COPY_BATCH):
                writer.append(batch)
        meta = lazy.meta
    if not unlabelled:
        return PreparedData(out, writer.count)
    with _job_data(out, path, unlabelled[0]):
        tracks = _copy_unlabelled(path, unlabelled, out, meta)
    return PreparedData(out, writer.count, len(tracks))


def _copy_unlabelled(
    path: Path, groups: list[str], out: Path, meta: EnvironmentMeta
) -> UnlabelledTracks:
    """Read, validate and join the unlabelled groups (size-checked by `prepare_h5`) into
    the job's file as `JOB_UNLABELLED_GROUP`."""
    tracks = UnlabelledTracks.concat([read_unlabelled(path, g) for g in groups])
    with _storage_errors():
        write_unlabelled(out, JOB_UNLABELLED_GROUP, tracks, meta)
    return tracks


def _check_unlabelled_size(path: Path, groups: list[str], limits: UploadLimits) -> None:
    """Refuse (413) unlabelled groups over the caps, from their shapes alone."""
    rows = 0
    decoded = 0
    with h5py.File(path, "r") as f:
        for group in groups:
            for name in ("csi", "time", "track"):
                node = f[group].get(name)
                if isinstance(node, h5py.Dataset):
                    decoded += math.prod(node.shape) * node.dtype.itemsize
                    rows += int(node.shape[0]) if name == "csi" and node.ndim else 0
    if rows > limits.max_samples or decoded > limits.max_decoded_bytes:
        raise PayloadTooLarge(
            f"unlabelled tracks hold {rows} samples ({decoded} bytes decoded); at most "
            f"{limits.max_samples} samples and {limits.max_decoded_bytes} bytes are accepted",
            {"max_samples": limits.max_samples, "got": rows, "decoded": decoded},
        )


def _unlabelled_by_bs(groups: list[str], bs_ids: list[str]) -> dict[str, list[str]]:
    """A multi-BS upload's unlabelled groups by the BS that saw each (the last part of its
    name); a name that is none of the site's BSs is a 422 (it would train no model)."""
    by_bs: dict[str, list[str]] = {}
    for group in groups:
        bs = group.rpartition("/")[2]
        if bs not in bs_ids:
            raise InvalidInput(
                f"unlabelled group {group!r} is not named by one of the site's base stations; "
                f"expected groups named {sorted(bs_ids)} (the last part of the name)",
                {"group": group, "base_stations": sorted(bs_ids)},
            )
        by_bs.setdefault(bs, []).append(group)
    return by_bs


def _copy_site_unlabelled(
    path: Path,
    by_bs: dict[str, list[str]],
    metas: dict[str, EnvironmentMeta],
    out: Path,
) -> int:
    """A multi-BS upload's unlabelled groups per BS (`_unlabelled_by_bs`; size-checked by
    `prepare_h5`): read, validated, joined per BS (`join_recordings`: a recording's track
    ids shared by its BSs) and written as ``JOB_UNLABELLED_GROUP/<bs>``; returns the
    samples copied."""
    parts = [
        (recording_of(path, g), bs, read_unlabelled(path, g))
        for bs, names in by_bs.items()
        for g in names
    ]
    copied = 0
    for bs, tracks in join_recordings(parts).items():
        with _storage_errors():
            write_unlabelled(out, f"{JOB_UNLABELLED_GROUP}/{bs}", tracks, metas[bs])
        copied += len(tracks)
    return copied


def _site_group(path: Path, envs: list[str], env: str | None) -> str | None:
    """The group whose environments are a multi-BS upload's base stations, or None.

    `env` naming a group (not an environment) that holds environments picks it; with no
    `env`, a file whose environments (two or more, each with a `sample_id`) all sit in
    one group is a multi-BS upload. Anything else is a single-BS upload, as before.
    """
    try:
        groups = site_groups(path)
        if env is not None:
            key = env.strip("/")
            return key if env not in envs and key in groups else None
        if len(envs) >= 2 and len(groups) == 1 and has_sample_ids(path, envs):
            return next(iter(groups))
    except SchemaError as exc:
        raise _schema_error(exc, "upload") from None
    except (OSError, ValueError, KeyError, RuntimeError, UnicodeDecodeError) as exc:
        raise _unreadable(exc, path) from None
    return None


def _prepare_site(
    path: Path, group: str, limits: UploadLimits, directory: Path
) -> tuple[PreparedData, dict[str, EnvironmentMeta]]:
    """A multi-BS upload: size-checked per BS (summed), joined, written as `JOB_SITE_GROUP`;
    also each BS's environment attributes (its unlabelled groups are written with them)."""
    envs = site_groups(path)[group]
    rows = 0
    decoded = 0
    with h5py.File(path, "r") as f:
        for env in envs:
            for name in ("csi", "pos", "los", "snr_db", "sample_id"):
                node = f[env].get(name)
                if isinstance(node, h5py.Dataset):
                    decoded += math.prod(node.shape) * node.dtype.itemsize
                    rows = rows + int(node.shape[0]) if name == "csi" and node.ndim else rows
    if rows > limits.max_samples:
        raise PayloadTooLarge(
            f"upload holds {rows} fingerprints; at most {limits.max_samples} are accepted",
            {"max_samples": limits.max_samples, "got": rows},
        )
    if decoded > limits.max_decoded_bytes:
        raise PayloadTooLarge(
            f"upload decodes to {decoded} bytes; at most {limits.max_decoded_bytes} are accepted",
            {"max_decoded_bytes": limits.max_decoded_bytes, "got": decoded},
        )
    out = _new_data_file(directory)
    with _job_data(out, path, group):
        site = read_site(path, group)
        for bs in site.bs_ids:
            if len(site.station(bs)) < limits.min_samples:
                raise InvalidInput(
                    f"base station {bs!r} has {len(site.station(bs))} labelled fingerprints; "
                    f"adaptation needs at least {limits.min_samples} per base station",
                    {"bs": bs, "min_samples": limits.min_samples, "got": len(site.station(bs))},
                )
        if len(site) < limits.min_samples:
            raise InvalidInput(
                f"{len(site)} labelled positions; adaptation needs at least {limits.min_samples}",
                {"min_samples": limits.min_samples, "got": len(site)},
            )
        with _storage_errors():
            write_site(out, JOB_SITE_GROUP, site)
        return PreparedData(out, len(site)), {bs: st.meta for bs, st in site.stations.items()}


_JSON_TRACKS = {"csi": "[K][8][103][2]", "time": "[K] seconds", "track": "[K] integer ids"}


def _json_tracks(raw: Any, limits: UploadLimits) -> UnlabelledTracks:
    """The optional ``unlabelled`` member of a JSON body, validated like an uploaded group
    (``csi`` alone: fingerprints without tracks)."""
    untracked = isinstance(raw, dict) and "csi" in raw and "time" not in raw and "track" not in raw
    if not isinstance(raw, dict) or not (untracked or all(k in raw for k in _JSON_TRACKS)):
        raise InvalidInput(
            "'unlabelled' must be an object with 'csi' [K][8][103][2], 'time' [K] and "
            "'track' [K] (samples of UE tracks, without positions), or 'csi' alone "
            "(fingerprints without tracks)",
            {"expected": _JSON_TRACKS},
        )
    try:
        csi = np.asarray(raw["csi"], dtype=np.float32)
        time = None if untracked else np.asarray(raw["time"], dtype=np.float64)
        ids = None if untracked else np.asarray(raw["track"], dtype=np.float64)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidInput(
            "unlabelled csi, time and track must be numeric arrays",
            {"reason": str(exc).split("\n")[0]},
        ) from None
    if csi.ndim and len(csi) > limits.max_samples:
        raise PayloadTooLarge(
            f"unlabelled tracks hold {len(csi)} samples; at most {limits.max_samples} are accepted",
            {"max_samples": limits.max_samples, "got": len(csi)},
        )
    if time is None or ids is None:
        tracks = UnlabelledTracks.untracked(np.atleast_1d(csi))
    else:
        int32 = np.iinfo(np.int32)
        if ids.ndim != 1 or not (
            np.isfinite(ids).all()
            and (ids == np.round(ids)).all()
            and ((ids >= int32.min) & (ids <= int32.max)).all()
        ):
            raise InvalidInput(
                "unlabelled track must be a list of integer track ids (32-bit), one per sample",
                {"expected": _JSON_TRACKS["track"], "shape": list(ids.shape)},
            )
        tracks = UnlabelledTracks(csi=csi, time=time, track=ids.astype(np.int32))
    try:
        tracks.validate("request", "unlabelled")
    except SchemaError as exc:
        raise _schema_error(exc, "request") from None
    return tracks


def prepare_json(
    doc: Any, limits: UploadLimits, directory: Path
) -> tuple[PreparedData, AdaptOptions]:
    """A JSON adapt body `{"csi", "pos", "options"}`, validated and written for the job;
    an optional `"unlabelled": {"csi", "time", "track"}` adds tracks without positions."""
    if not isinstance(doc, dict) or "csi" not in doc or "pos" not in doc:
        raise InvalidInput(
            "JSON body must be an object with 'csi' [M][8][103][2] and 'pos' [M][2]",
            {
                "expected": {
                    "csi": "[M][8][103][2]",
                    "pos": "[M][2]",
                    "options": {},
                    "unlabelled (optional)": _JSON_TRACKS,
                }
            },
        )
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidInput("options must be an object", {"got": type(options).__name__})
    parsed = parse_options(options)
    try:
        csi = np.asarray(doc["csi"], dtype=np.float32)
        pos = np.asarray(doc["pos"], dtype=np.float32)
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidInput(
            "csi and pos must be numeric arrays", {"reason": str(exc).split("\n")[0]}
        ) from None
    data = Fingerprints(csi=csi, pos=pos)
    try:
        data.validate("request", "json")
    except SchemaError as exc:
        raise _schema_error(exc, "request") from None
    n = len(data)
    if n > limits.max_samples:
        raise PayloadTooLarge(
            f"request holds {n} fingerprints; at most {limits.max_samples} are accepted",
            {"max_samples": limits.max_samples, "got": n},
        )
    if n < limits.min_samples:
        raise InvalidInput(
            f"{n} labelled fingerprints; adaptation needs at least {limits.min_samples}",
            {"min_samples": limits.min_samples, "got": n},
        )
    tracks = None if doc.get("unlabelled") is None else _json_tracks(doc["unlabelled"], limits)
    meta = EnvironmentMeta(description="adapt request")
    out = _new_data_file(directory)
    try:
        with _storage_errors():
            with EnvironmentWriter(out, JOB_DATA_ENV, meta) as w:
                w.append(data)
            if tracks is not None:
                write_unlabelled(out, JOB_UNLABELLED_GROUP, tracks, meta)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return PreparedData(out, n, 0 if tracks is None else len(tracks)), parsed


def load_job_data(path: Path) -> Fingerprints | SiteFingerprints:
    """A job's training data (written by `prepare_h5` / `prepare_json`), in memory: a
    `SiteFingerprints` for a multi-BS upload."""
    if JOB_SITE_GROUP in site_groups(path):
        return read_site(path, JOB_SITE_GROUP)
    with LazyEnvironment(path, JOB_DATA_ENV) as lazy:
        return lazy.read(slice(None))


def load_job_unlabelled(path: Path) -> UnlabelledTracks | dict[str, UnlabelledTracks] | None:
    """A job's unlabelled tracks (`JOB_UNLABELLED_GROUP`; per BS id at a multi-BS site), or
    None when the upload had none."""
    names = list_unlabelled(path)
    if JOB_UNLABELLED_GROUP in names:
        return load_unlabelled(path, JOB_UNLABELLED_GROUP)
    per_bs = [n for n in names if n.startswith(f"{JOB_UNLABELLED_GROUP}/")]
    if not per_bs:
        return None
    return {n.rpartition("/")[2]: read_unlabelled(path, n) for n in per_bs}


UPLOAD_TYPES = ("multipart/form-data", "application/x-hdf5", "application/octet-stream")

_OPTION_FIELDS = {name: {"type": "string"} for name in AdaptOptions.model_fields}
OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["csi", "pos"],
                    "properties": {
                        "csi": {"type": "array", "description": "[M][8][103][2] floats"},
                        "pos": {"type": "array", "description": "[M][2] metres"},
                        "options": AdaptOptions.model_json_schema(),
                        "unlabelled": {
                            "type": "object",
                            "description": "optional tracks of the site's UEs without "
                            "positions (the track-consistency term); 'csi' alone: "
                            "fingerprints without tracks",
                            "required": ["csi"],
                            "properties": {
                                "csi": {"type": "array", "description": "[K][8][103][2] floats"},
                                "time": {"type": "array", "description": "[K] seconds"},
                                "track": {"type": "array", "description": "[K] integer ids"},
                            },
                        },
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "string", "format": "binary"},
                        "env": {"type": "string"},
                        **_OPTION_FIELDS,
                    },
                }
            },
            "application/x-hdf5": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def accept(request: Request, site: str, settings: Settings, jobs: JobManager) -> JobRecord:
    """Validate an adapt request completely, then queue its job (the route's whole work).

    The busy-site and global-limit rules are checked first, before the body is read, so a
    refused upload costs nothing; `JobManager.submit` checks them again under its lock.
    """
    from starlette.concurrency import run_in_threadpool

    from service.errors import UnsupportedMediaType
    from service.uploads import parse_json, read_body, stream_body_to_file, stream_multipart

    await run_in_threadpool(jobs.check_accepting, site)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limits = UploadLimits.of(settings)
    upload_dir = settings.job_dir / "uploads"
    upload_dir.mkdir(parents=True, exist_ok=True)
    path: Path | None = None
    prepared: PreparedData | None = None
    try:
        if ctype == "multipart/form-data":
            path, fields = await stream_multipart(request, settings.max_upload_bytes, upload_dir)
            if path is None:
                raise InvalidInput("multipart form has no 'data' file part (the HDF5 file)")
            env = fields.pop("env", None)
            options = parse_options(fields)
            prepared = await run_in_threadpool(prepare_h5, path, env, limits, upload_dir)
        elif ctype in ("application/x-hdf5", "application/octet-stream"):
            path = await stream_body_to_file(request, settings.max_upload_bytes, upload_dir)
            query = dict(request.query_params)
            env = query.pop("env", None)
            options = parse_options(query)
            prepared = await run_in_threadpool(prepare_h5, path, env, limits, upload_dir)
        elif ctype == "application/json":
            body = await read_body(request, settings.max_body_bytes)
            doc = await run_in_threadpool(parse_json, body)
            prepared, options = await run_in_threadpool(prepare_json, doc, limits, upload_dir)
        else:
            raise UnsupportedMediaType(
                f"unsupported content type {ctype or '(none)'!r}",
                {"expected": [*UPLOAD_TYPES[:2], "application/json"]},
            )
        assert prepared is not None
        data = prepared
        record: JobRecord = await run_in_threadpool(
            jobs.submit, site, options, data.path, data.samples
        )
        return record
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
        if prepared is not None:
            prepared.path.unlink(missing_ok=True)  # gone already if the job took it
