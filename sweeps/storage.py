"""Optuna storage for sweeps: SQLite (one machine), JournalStorage (shared file system),
PostgreSQL (a server). SQLite over NFS corrupts under concurrent writers: refused."""

from __future__ import annotations

import os
from pathlib import Path

import optuna

from detlab.sweeps.space import SweepError

NETWORK_FS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb2", "smbfs", "beegfs", "fuse.sshfs"}


def filesystem_type(path: Path) -> str:
    """The mount type holding ``path`` (from /proc/mounts; "" when unknown)."""
    path = path.resolve()
    best, fstype = "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype


def storage_url(spec: str | None, out_dir: Path) -> str:
    """The effective storage string: default SQLite in the sweep's folder."""
    return spec or f"sqlite:///{(out_dir / 'optuna.db').resolve()}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """Open (creating when needed) and check it is reachable; errors name the storage."""
    try:
        if url.startswith("journal:"):
            path = Path(url.split(":", 1)[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            fstype = filesystem_type(path.parent)
            if fstype in NETWORK_FS:
                raise SweepError(
                    f"sweep.storage={url} lives on {fstype}: SQLite over a network file "
                    f"system is not safe with concurrent workers; use "
                    f"sweep.storage=journal:{path.with_suffix('.journal')} or a postgresql:// URL"
                )
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        if url.startswith(("postgresql", "mysql")):
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except SweepError:
        raise
    except Exception as exc:  # unreachable server, bad credentials, unwritable folder
        raise SweepError(f"sweep.storage={url} is not reachable: {exc}") from exc
    raise SweepError(
        f"sweep.storage={url!r}: use sqlite:///<file>, journal:<file> or postgresql://..."
    )


def warn_if_unsafe_for_cluster(url: str, cluster: str) -> str | None:
    if cluster == "slurm" and url.startswith("sqlite:///") and os.environ.get("SLURM_CONF"):
        return (
            "SQLite storage with SLURM workers is only safe when every worker runs on this "
            "machine's local disk; on a real cluster use sweep.storage=journal:<shared path>"
        )
    return None
