"""What several processes share: the SQL databases behind MLflow and Optuna, and cached model folders.

Processes started together on a fresh database (parallel jobs, several sweepers) race to create its tables:
on sqlite the loser leaves a half-migrated file behind (`table _alembic_tmp_experiments already exists`),
so the first use of a sqlite file is serialised with a lock file beside it. A server database (PostgreSQL)
migrates in transactions: there the loser's error goes away when it tries again.

A cached folder (an SFT base, a reward model, a dequantized GGUF model) is written into a private temporary folder
(``partial_dir``) and published with one rename (``publish_once``), so no job ever reads a half-written folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from workbench.config import has_weights

T = TypeVar("T")


SQLITE = "sqlite:///"


def sqlite_path(uri: str | None) -> Path | None:
    """The absolute path of a sqlite URL's file (relative ones resolved against the working directory)."""
    if uri and uri.startswith(SQLITE) and uri != SQLITE + ":memory:":
        return Path(uri[len(SQLITE):]).resolve()
    return None


@contextmanager
def first_use_lock(uri: str | None) -> Iterator[None]:
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_store(uri: str | None, action: Callable[[], T], attempts: int = 5, wait_s: float = 1.0) -> T:
    """``action()`` (which opens the database at ``uri``) under the first-use lock, tried again on failure."""
    from sqlalchemy.exc import ArgumentError

    from workbench.errors import ConfigError

    for attempt in range(attempts):
        try:
            with first_use_lock(uri):
                return action()
        except (ConfigError, ImportError, ArgumentError):  # a bad URL or a missing driver: trying again cannot help
            raise
        except Exception:  # noqa: BLE001 - the last attempt's error is raised as it is
            if attempt == attempts - 1:
                raise
            time.sleep(wait_s * (attempt + 1))
    raise AssertionError("unreachable")


def ensure_experiment(uri: str, name: str) -> str:
    """The id of MLflow experiment ``name``, created if missing (by whichever process gets there first)."""
    import mlflow

    def get_or_create() -> str:
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except mlflow.exceptions.MlflowException:  # created by a parallel process in between
            return client.get_experiment_by_name(name).experiment_id

    return open_store(uri, get_or_create)


def partial_dir(path: Path) -> Path:
    """A private, empty temporary folder next to a cache folder: parallel jobs never share one."""
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_once(tmp: Path, path: Path, complete: Callable[[Path], bool] = has_weights) -> None:
    """Move a finished temporary folder to its cache path in one rename. A parallel job may have got there first
    (its folder is as good: ours is dropped); an incomplete leftover of a killed job is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not complete(path):
        shutil.rmtree(path, ignore_errors=True)  # it would make the rename fail
    try:
        tmp.rename(path)
    except OSError:
        if not complete(path):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
