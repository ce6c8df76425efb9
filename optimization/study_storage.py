"""Where a search's Optuna study lives (search.storage) and how a worker opens it: a SQLite file in the experiment
folder by default, a journal file, or any RDB URL shared by several machines. Opening races other workers that
create the same database at the same instant; a damaged file is one sentence naming it and the way forward.

Imports Optuna but not torch: a worker opens its study before it trains anything.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from config.schema import RunConfig
from utils.errors import ConfigError, CorruptFileError

OPEN_ATTEMPTS = 4  # opening a database that another worker is creating


def storage_url(template: RunConfig, folder: Path) -> str:
    """search.storage as Optuna opens it: '' is <experiment>/search.db; a relative journal path is in the folder."""
    spec = template.search.storage
    if not spec:
        return f"sqlite:///{(folder / 'search.db').resolve()}"
    if spec.startswith("journal:"):
        path = Path(spec[len("journal:"):]).expanduser()
        return f"journal:{path if path.is_absolute() else (folder / path).resolve()}"
    return spec


def open_storage(template: RunConfig, folder: Path):
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    url = storage_url(template, folder)
    where = f"search.storage of run {template.name} ({redacted(url)})"
    for attempt in range(OPEN_ATTEMPTS):
        try:
            if url.startswith("journal:"):
                return JournalStorage(JournalFileBackend(url[len("journal:"):]))
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None)
        except ModuleNotFoundError as err:
            raise ConfigError(f"{where}: its database driver is not installed ({err.name}); e.g. pip install "
                              "psycopg2-binary for postgresql://") from None
        except Exception as err:  # a bad URL, an unreachable server, a locked file: SQLAlchemy has many kinds
            if _damaged(err, url):
                raise  # _damage_named says so
            # Workers that start together race to create the tables; the losers find them made on a second look.
            if attempt + 1 == OPEN_ATTEMPTS or type(err).__name__ not in ("IntegrityError", "OperationalError"):
                raise ConfigError(f"{where} cannot be opened: {str(err).splitlines()[0]}") from None
            time.sleep(1.0 + attempt)


def _damaged(err: Exception, url: str) -> BaseException | None:
    """The error that says the storage's file is damaged (not that it is locked, say, or unreachable), if `err`
    is or wraps one (Optuna wraps SQLAlchemy's, which wraps the driver's)."""
    import json
    import sqlite3

    while err is not None:
        if url.startswith("journal:"):  # a line that is not JSON (Optuna skips only a half-written last one)
            if isinstance(err, (json.JSONDecodeError, UnicodeDecodeError)):
                return err
        elif isinstance(err, sqlite3.DatabaseError) and err.sqlite_errorname in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            return err
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def damage_named(template: RunConfig, folder: Path):
    """A damaged storage, whenever it is read, is one sentence naming it and the way forward."""
    try:
        yield
    except Exception as err:
        url = storage_url(template, folder)
        damage = _damaged(err, url)
        if damage is None:
            raise
        ours = url.startswith(("sqlite:///", "journal:"))
        where = url.split("sqlite:///", 1)[-1].removeprefix("journal:") if ours else f"the database {redacted(url)}"
        raise CorruptFileError(where, str(damage).splitlines()[0],
                               f"{'remove it' if ours else 'delete its study'} to start the search over (search.storage "
                               f"of run {template.name}): a new trial that draws the values of a run folder trained "
                               "before uses it without training again") from None


def redacted(url: str) -> str:
    """The URL without its password, for messages and search.json."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url
