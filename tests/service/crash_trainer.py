"""The real `training.transfer.adapt_site`, killed (SIGKILL) in the middle of publishing.

Used through the `adapt_entrypoint` setting in a worker process. It wraps the
repository's synced file write so that the process kills itself right after the new
version's manifest is written into the hidden temp folder and before that folder is
renamed into `versions/`: the worst moment for a crash, with every file on disk.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import training.repository as repository
from training.transfer import AdaptResult
from training.transfer import adapt_site as real_adapt_site


def _kill_after_manifest(write: Callable[[Path, bytes], None]) -> Callable[[Path, bytes], None]:
    def wrapped(path: Path, data: bytes) -> None:
        write(path, data)
        if path.name == repository.MANIFEST and path.parent.name.startswith(
            repository._TEMP_PREFIX
        ):
            os.kill(os.getpid(), signal.SIGKILL)

    return wrapped


def adapt_site(*args: Any, **kwargs: Any) -> AdaptResult:
    repository._write_file_synced = _kill_after_manifest(repository._write_file_synced)  # type: ignore[assignment]
    return real_adapt_site(*args, **kwargs)
