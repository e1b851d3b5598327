"""System programs a test needs (a browser, a database server), installed from Debian's apt when missing.

    path = ensure_debian_package("chromium", "chromium")
    if path is None:
        pytest.skip(f"chromium is not installed and could not be installed: {install_errors.get('chromium', '')}")

Installing only happens as root on a machine with apt-get (a CI container, the dev box); elsewhere the
caller skips. pytest runs with xdist, so two workers (or two engineers' test runs on one machine) may ask
at once: a file lock under /tmp serialises them, and whoever gets the lock second finds the program
already there.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
from pathlib import Path

LOCK_PATH = Path("/tmp/workbench-apt.lock")
# apt's own dpkg lock may be held by someone else's apt-get; wait for it rather than fail at once
APT_OPTIONS = ["-o", "DPkg::Lock::Timeout=600", "-o", "Acquire::Retries=2"]
APT_TIMEOUT_S = 1200  # a browser and its libraries is a few hundred MB on a slow mirror

# package -> why it could not be installed, for the caller's skip message
install_errors: dict[str, str] = {}
_updated = False  # apt-get update runs at most once per process


def find_executable(executable: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    """PATH first, then extra_dirs (glob patterns allowed, e.g. '/usr/lib/postgresql/*/bin', newest last)."""
    found = shutil.which(executable)
    if found:
        return found
    for pattern in extra_dirs:
        for directory in sorted(glob.glob(pattern), reverse=True):
            candidate = os.path.join(directory, executable)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


def _apt(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *APT_OPTIONS, *args], env=env, capture_output=True, text=True,
                          timeout=APT_TIMEOUT_S)


def ensure_debian_package(executable: str, package: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    """Path of `executable`, installing Debian `package` first when it is missing; None when it cannot be had.

    `extra_dirs` are searched after PATH, for programs Debian keeps off it (pg_ctl lives in
    /usr/lib/postgresql/<version>/bin).
    """
    global _updated
    found = find_executable(executable, extra_dirs)
    if found:
        return found
    if os.name != "posix" or os.geteuid() != 0:
        install_errors[package] = "not root, so apt-get cannot install it"
        return None
    if shutil.which("apt-get") is None:
        install_errors[package] = "no apt-get on this machine"
        return None
    with open(LOCK_PATH, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = find_executable(executable, extra_dirs)  # another worker may have installed it meanwhile
            if found:
                return found
            try:
                if not _updated:
                    done = _apt(["update"])
                    if done.returncode != 0:
                        install_errors[package] = f"apt-get update failed: {done.stderr.strip()[-500:]}"
                        return None
                    _updated = True
                done = _apt(["install", "-y", "--no-install-recommends", package])
            except subprocess.TimeoutExpired:
                install_errors[package] = f"apt-get took over {APT_TIMEOUT_S} s"
                return None
            if done.returncode != 0:
                install_errors[package] = f"apt-get install {package} failed: {done.stderr.strip()[-500:]}"
                return None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    found = find_executable(executable, extra_dirs)
    if found is None:
        install_errors[package] = f"package {package} installed but provides no {executable}"
    return found
