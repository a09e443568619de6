"""Database backends behind one interface (`Backend`) and a registry with their metadata, the way Optuna's
storages work.

The `Store` is written once against `Backend`; each backend module holds only what its database does
differently: URL checks, connection setup, how a write transaction starts, bulk loading, time bucketing,
notifications and its error messages. Adding a backend is one module plus one `register_backend` line
below; `Store.open(url)` finds it by the URL's scheme.
"""

from __future__ import annotations

from sqlalchemy.engine import URL

from kvpilot.storage.backends.base import Backend, BackendSpec, Listener
from kvpilot.storage.errors import BadDatabaseURLError

BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a backend (a name or URL scheme registered twice is a mistake, not an override)."""
    if spec.name in BACKENDS:
        raise ValueError(f"backend {spec.name!r} is already registered ({BACKENDS[spec.name].target})")
    taken = {s: b.name for b in BACKENDS.values() for s in b.schemes}
    clash = [s for s in spec.schemes if s in taken]
    if clash:
        raise ValueError(f"backend {spec.name!r}: URL scheme(s) {clash} already belong to {taken[clash[0]]!r}")
    BACKENDS[spec.name] = spec
    return spec


def url_forms() -> str:
    """How to write a URL for each backend, for help texts and errors."""
    return " or ".join(b.url_form for b in BACKENDS.values())


def spec_for(url: URL) -> BackendSpec:
    """The backend answering the URL's scheme, or BadDatabaseURLError."""
    scheme = url.drivername.partition("+")[0]
    for spec in BACKENDS.values():
        if scheme in spec.schemes:
            return spec
    shown = url.render_as_string(hide_password=True)
    raise BadDatabaseURLError(f"unsupported database URL scheme {url.drivername!r} in {shown!r}: use {url_forms()}")


def backend_for(url: URL) -> Backend:
    """A backend instance for a checked URL (see `kvpilot.storage.url.resolve_url`)."""
    return spec_for(url).load()()


register_backend(BackendSpec(
    "sqlite", ("sqlite",), "sqlite:///PATH (or a plain file path)",
    "one local file; the default; many readers, one writer at a time (WAL)",
    "kvpilot.storage.backends.sqlite:SQLiteBackend",
))
register_backend(BackendSpec(
    "postgresql", ("postgresql", "postgres"), "postgresql+psycopg://USER@HOST:PORT/DBNAME",
    "a server shared by many engines and tuners; pushes reach engines at once (LISTEN/NOTIFY)",
    "kvpilot.storage.backends.postgres:PostgresBackend",
))

__all__ = ["BACKENDS", "Backend", "BackendSpec", "Listener", "backend_for", "register_backend", "spec_for", "url_forms"]
