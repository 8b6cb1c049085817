"""What made a table, and who writes it: the provenance record beside a table and its lock.

Beside a table written to a file, ``<table>.agegender.json`` records what made it (the model's
fingerprint and labels, the backend, every analysis setting): ``--resume`` refuses a table
made by another analysis, naming what differs in words. ``<table>.lock`` keeps a second
process from writing the same table while a run holds it, and is removed when the run ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agegender_sb.errors import OutputError, TableError

__all__ = ["provenance_path", "write_provenance", "check_provenance", "TableLock"]


def provenance_path(table: str | os.PathLike) -> Path:
    """Where the record of what made ``table`` lives: ``<table>.agegender.json``."""
    table = Path(table)
    return table.with_name(table.name + ".agegender.json")


def write_provenance(table: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` beside ``table`` atomically (temporary file, then rename)."""
    path = provenance_path(table)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: What each recorded field stands for, in the words of the command line.
FIELD_NAMES = {
    "model.fingerprint": "the model's weights",
    "model.labels": "the gender labels",
    "backend": "--backend",
    "precision": "--precision",
    "fast_path": "--fast-path",
    "format": "--format",
    "onnx.fingerprint": "the ONNX graph (--onnx-path)",
    "onnx.exported_from": "the model the ONNX graph was exported from",
    "analysis.window": "--window",
    "analysis.hop": "--hop",
    "analysis.max_whole": "--max-whole",
    "analysis.min_tail": "min_tail",
    "analysis.trim": "--trim",
    "analysis.context": "--speech-context",
    "analysis.detector": "the speech detector (--vad and its options)",
}


def _said(key: str, old: dict, new: dict) -> str:
    name = FIELD_NAMES.get(key, key)
    if key == "model.fingerprint":
        return (f"{name} differ: {old.get('model.source')!r} there (weights "
                f"{old.get(key)}), {new.get('model.source')!r} here (weights {new.get(key)})")
    return f"{name} is {old.get(key)!r} there, {new.get(key)!r} here"


def check_provenance(table: str | os.PathLike, record: dict) -> None:
    """Refuse to resume ``table`` unless it was made by the analysis ``record`` describes.

    Raises
    ------
    TableError
        Naming what differs in the command line's words (or the missing record).

    Example
    -------
    >>> t = getfixture("tmp_path") / "t.csv"
    >>> _ = t.write_text("x\\n"); _ = write_provenance(t, {"analysis": {"window": 4.0}})
    >>> check_provenance(t, {"analysis": {"window": 2.0}})
    Traceback (most recent call last):
    ...
    agegender_sb.errors.TableError: ...: made by another analysis: --window is 4.0 there, \
2.0 here; resume with the same settings, or write a new table
    """
    path = provenance_path(table)
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TableError(f"{table}: no record of what made this table ({path.name} is "
                         "missing), so appending could mix two analyses; write a new "
                         "table") from None
    except (OSError, ValueError) as err:
        raise TableError(f"{path}: unreadable ({err})") from err
    a, b = _flat(old if isinstance(old, dict) else {}), _flat(record)
    # the model is identified by its fingerprint, not by the path or id it was loaded from
    differ = [k for k in sorted(set(a) | set(b)) if k not in ("created", "model.source")
              and a.get(k) != b.get(k)]
    if differ:
        said = "; ".join(_said(k, a, b) for k in differ[:4])
        raise TableError(f"{table}: made by another analysis: {said}; resume with the same "
                         "settings, or write a new table")


class TableLock:
    """Hold ``<table>.lock`` while a run writes ``table``, so that no second process writes
    it (released by the kernel if the process dies); the lock file is removed when the
    run ends.

    Raises
    ------
    TableError
        On entering, if another process holds the lock.
    OutputError
        If the lock file cannot be made (its folder unwritable, a folder in its place).

    Example
    -------
    >>> table = getfixture("tmp_path") / "t.csv"
    >>> with TableLock(table):
    ...     TableLock(table).__enter__()
    Traceback (most recent call last):
    ...
    agegender_sb.errors.TableError: ...: another agegender process is writing this table ...
    >>> (table.parent / "t.csv.lock").exists()
    False
    """

    def __init__(self, table: str | os.PathLike):
        from filelock import FileLock

        self.table = Path(table)
        self.path = self.table.with_name(self.table.name + ".lock")
        self._lock = FileLock(str(self.path))

    def __enter__(self) -> TableLock:
        from filelock import Timeout

        try:
            self.table.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise TableError(f"{self.table}: another agegender process is writing this "
                             f"table (lock {self.path}); wait for it or choose another "
                             "output") from None
        except OSError as err:
            raise OutputError(f"{self.path}: cannot make the lock file of {self.table} "
                              f"({err.strerror or err})") from None
        if not self.path.exists():  # locked a file another run removed as it ended
            self._lock.release()
            raise TableError(f"{self.table}: another agegender process was just writing "
                             "this table; run again")
        return self

    def __exit__(self, *exc) -> None:
        if self._lock.is_locked:
            self.path.unlink(missing_ok=True)  # while still held: no one else can hold it
            self._lock.release()
