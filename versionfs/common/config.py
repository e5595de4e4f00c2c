"""The state directory's ``config.toml``: a schema with defaults, checked on load.

Every key is declared once in ``SCHEMA`` with its type, default and a one-line
doc.  Loading refuses unknown keys and wrong types with one ``ConfigError``
line naming the key and the file, because a typo in a config file that is
silently ignored is a setting the user believes is on and is not.  The same
schema renders ``contrib/config.example.toml`` (``example_toml()``), so the
documented example can never drift from what the loader accepts.

Only keys something reads are declared: a setting that does nothing would be
a lie to the user.  Later issues add theirs with ``register()`` (or by
extending ``SCHEMA`` here); the sections ``cloud`` (lease TTL, WAL shipping),
``snapshots`` (schedule, retention) and ``metrics`` (listen address) are
reserved for issues 5 and 6.
"""

from __future__ import annotations

import os
import re
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tomli_w

from .units import UnitError, parse_duration, parse_size

__all__ = ["ConfigError", "Key", "SCHEMA", "Config", "register", "load", "save",
           "defaults", "example_toml"]


class ConfigError(Exception):
    """A config file that cannot be used; ``str()`` is one line for the user."""


@dataclass(frozen=True)
class Key:
    """One config key: ``kind`` is bool/int/float/str/size/list; ``check`` validates further."""

    section: str
    name: str
    kind: str
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None   # returns an error text or None
    example: Any = None                                 # shown commented out in the example

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else "must be one of " + ", ".join(repr(c) for c in choices)
    return check


def _slow_url(v: Any) -> str | None:
    from versionfs.blob.url import check_no_secrets
    try:
        check_no_secrets(v)
    except ValueError as e:
        return str(e).replace("the store URL ", "", 1)
    if v == "" or re.match(r"^(file|s3|http|https)://", v):
        return None
    return ("must be empty (the slow/ directory in the state dir), file:///path, "
            "s3://bucket/prefix or a remote store URL http[s]://host:port")


def _duration(v: Any) -> str | None:
    if v == "":
        return None
    try:
        parse_duration(v)
    except UnitError as e:
        return str(e)
    return None


SECTION_DOCS: dict[str, str] = {
    "store": "Where blobs live: the fast local store and the slow (cloud) store behind it.",
    "encryption": "enabled is set by `versionfs init --encrypt` and cannot change later; "
                  "cipher may (blobs of either cipher stay readable).",
    "mount": "How the mounted filesystem behaves.",
    "meta": "The metadata engine (WAL + LMDB).",
    "cloud": "Sharing the filesystem through the slow store (issue 5: lease, WAL shipping).",
    "snapshots": "Automatic snapshots and their retention (issue 6).",
    "metrics": "Prometheus metrics (issue 6).",
}

SCHEMA: dict[str, Key] = {}


def register(key: Key) -> Key:
    """Declare a config key (later issues add theirs here); a clash is a programming error."""
    if key.dotted in SCHEMA:
        raise ValueError(f"config key {key.dotted} declared twice")
    if key.section not in SECTION_DOCS:
        raise ValueError(f"config section [{key.section}] has no SECTION_DOCS entry")
    SCHEMA[key.dotted] = key
    return key


for _k in [
    Key("store", "slow", "str", "",
        "Slow store URL: file:///path, s3://bucket/prefix, or a remote store URL "
        "(`versionfs serve-store`). Empty: the slow/ directory inside the state dir.",
        _slow_url, example="s3://my-bucket/home"),
    Key("store", "fast_max_bytes", "size", 0,
        "Most bytes the fast local store may hold (e.g. \"20G\"); 0 = no limit. "
        "Blobs not yet uploaded are never evicted, so writes fail with ENOSPC "
        "rather than lose data when it is full.", _non_negative),
    Key("store", "upload_concurrency", "int", 8,
        "Parallel uploads to the slow store.", _positive),
    Key("store", "compression_level", "int", 3,
        "zstd level for blobs (1 fast .. 19 small; 0 = store uncompressed).",
        lambda v: None if 0 <= v <= 22 else "must be between 0 and 22"),
    Key("encryption", "enabled", "bool", False,
        "Blobs and published metadata are encrypted; the master key is wrapped "
        "by your passphrase in the state dir's key file and in the slow store "
        "(keys/master)."),
    Key("encryption", "cipher", "str", "aes-256-gcm",
        "AEAD cipher: aes-256-gcm or chacha20-poly1305.",
        _one_of("aes-256-gcm", "chacha20-poly1305")),
    Key("mount", "idle_seal_seconds", "float", 5.0,
        "A file written and then left alone this long is sealed into chunks (a new "
        "version, uploaded in the background). Until then fsync keeps it safe in the "
        "local dirty journal, and many saves become one version.",
        _positive),
    Key("mount", "seal_max_age_seconds", "float", 60.0,
        "A file that keeps being written is sealed at least this often. With "
        "cloud.wal_ship_interval_seconds it bounds what a lost laptop can lose (the RPO).",
        _positive),
    Key("mount", "metadata_sync_seconds", "float", 5.0,
        "Metadata written by seals, creates and renames is made durable (synced) at "
        "most this long after it changed. An fsync never waits for it: what it must "
        "keep is synced by the fsync itself.",
        _positive),
    Key("mount", "merge_quiet_seconds", "float", 60.0,
        "A file appended and sealed many times holds runs of small extents, and "
        "rewrites can leave a chunk mostly unused under partial extents; once the "
        "file has not been written for this long they are merged into regular "
        "chunks (the merged bytes are stored and uploaded once more).",
        _positive),
    Key("mount", "fuse_options", "list", [],
        "Extra FUSE options for every mount (like -o), e.g. [\"allow_other\"]."),
    Key("mount", "read_cache_bytes", "size", "64MiB",
        "Decoded file chunks kept in memory for reads (the largest part of the mount "
        "daemon's memory budget; see README \"Memory\").", _non_negative),
    Key("mount", "read_cache_idle_seconds", "float", 30.0,
        "The read cache is emptied after this long unused, so an idle mount holds "
        "little memory (the kernel's page cache still has recently used files).",
        _positive),
    Key("mount", "flush_timeout_seconds", "float", 60.0,
        "How long `versionfs umount` waits for uploads before warning and unmounting anyway.",
        _non_negative),
    Key("meta", "batch_interval", "float", 0.05,
        "Seconds between LMDB commits (the WAL makes each write durable at once).",
        _positive),
    Key("meta", "batch_limit", "int", 10000,
        "Commit to LMDB after this many operations even before batch_interval.",
        _positive),
    Key("meta", "quota_bytes", "size", "2GiB",
        "Largest the metadata database may grow (e.g. \"8G\"). Writes past it fail "
        "cleanly (ENOSPC) instead of corrupting anything; the LMDB map is twice this.",
        _positive),
    *[Key("snapshots", f"keep_{rule}", "int", 0,
          f"Retention: {what} (0 = rule off, -1 = no limit). Used by `versionfs forget "
          f"MOUNTPOINT` without arguments and by automatic snapshots.",
          lambda v: None if v >= -1 else "must be -1, 0 or more")
      for rule, what in (
          ("last", "keep the N newest snapshots"),
          ("hourly", "keep the newest snapshot of each of the last N hours that have one"),
          ("daily", "keep the newest snapshot of each of the last N days that have one"),
          ("weekly", "keep the newest snapshot of each of the last N ISO weeks that have one"),
          ("monthly", "keep the newest snapshot of each of the last N months that have one"),
          ("yearly", "keep the newest snapshot of each of the last N years that have one"))],
    Key("snapshots", "keep_within", "str", "",
        "Retention: keep every snapshot younger than this (e.g. \"2d\", \"1d12h\"); "
        "empty = rule off.", _duration, example="7d"),
    Key("snapshots", "keep_named", "bool", False,
        "Retention: keep every snapshot that was given a name."),
]:
    register(_k)
del _k

# Issue 5: publishing to the slow store and the writer lease (versionfs.bucket.session).
register(Key("cloud", "wal_ship_interval_seconds", "float", 15.0,
             "How often metadata changes are published to the slow store between "
             "flushes and snapshots: the most a lost or dead machine can lose.",
             lambda v: None if 0 < v <= 60 else "must be more than 0 and at most 60"))
register(Key("cloud", "checkpoint_interval_seconds", "float", 3600.0,
             "How often a full metadata checkpoint is published (WAL objects in between).",
             _positive))
register(Key("cloud", "lease_ttl_seconds", "float", 120.0,
             "The read-write mount's lease in the slow store expires this long after its "
             "holder stops renewing it (e.g. it died); keep it well above clock skew.",
             lambda v: None if v >= 1 else "must be at least 1"))


_KIND_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number",
               "str": "a string", "size": "a size (bytes or e.g. \"10G\")",
               "list": "a list of strings"}


def _coerce(key: Key, value: Any) -> Any:
    """The value in its canonical Python type, or ValueError with the reason."""
    kind = key.kind
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind == "size":
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return parse_size(value)
    elif kind == "list":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    raise ValueError(f"must be {_KIND_NAMES[kind]}, got {_describe(value)}")


def _describe(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})" if not isinstance(
        value, (dict, list)) else names.get(type(value), type(value).__name__)


def defaults() -> dict[str, dict[str, Any]]:
    """The built-in configuration, canonical types, by section."""
    out: dict[str, dict[str, Any]] = {}
    for key in SCHEMA.values():
        out.setdefault(key.section, {})[key.name] = _coerce(key, key.default)
    return out


@dataclass
class Config:
    """A validated configuration: ``cfg["store.slow"]`` or ``cfg.store["slow"]``."""

    values: dict[str, dict[str, Any]] = field(default_factory=defaults)
    path: Path | None = None

    def __getitem__(self, dotted: str) -> Any:
        section, _, name = dotted.partition(".")
        if dotted not in SCHEMA:
            raise KeyError(f"no config key {dotted}")
        return self.values.get(section, {}).get(name, _coerce(SCHEMA[dotted], SCHEMA[dotted].default))

    def __getattr__(self, section: str) -> dict[str, Any]:
        if section in SECTION_DOCS:
            merged = {k.name: self[k.dotted] for k in SCHEMA.values() if k.section == section}
            return merged
        raise AttributeError(section)

    def set(self, dotted: str, value: Any) -> None:
        """Set one key, validated exactly as on load."""
        where = str(self.path) if self.path else "config"
        key = SCHEMA.get(dotted)
        if key is None:
            raise ConfigError(f"{where}: unknown key {dotted}")
        self.values.setdefault(key.section, {})[key.name] = _validated(key, value, where)


def _validated(key: Key, value: Any, where: str) -> Any:
    try:
        coerced = _coerce(key, value)
    except ValueError as e:
        raise ConfigError(f"{where}: {key.dotted} {e}") from None
    if key.check is not None:
        problem = key.check(coerced)
        if problem:
            raise ConfigError(f"{where}: {key.dotted} {problem} (got {_shown(value)!r})")
    return coerced


def _shown(value: Any) -> Any:
    """``value`` for an error message, with any secret in a URL blanked out."""
    if not isinstance(value, str) or "://" not in value:
        return value
    value = re.sub(r"(?i)\b(token|password|secret\w*)=[^&#]*", r"\1=…", value)
    return re.sub(r"://([^/@:]*):[^/@]*@", r"://\1:…@", value)


def from_dict(data: dict[str, Any], where: str = "config") -> Config:
    """Validate a parsed TOML document; unknown sections/keys and bad values are ConfigError."""
    cfg = Config()
    for section, table in data.items():
        if section not in SECTION_DOCS:
            raise ConfigError(f"{where}: unknown section [{section}] "
                              f"(known: {', '.join(SECTION_DOCS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {section} must be a table ([{section}]), got {_describe(table)}")
        for name, value in table.items():
            key = SCHEMA.get(f"{section}.{name}")
            if key is None:
                known = ", ".join(k.name for k in SCHEMA.values() if k.section == section)
                raise ConfigError(f"{where}: unknown key {section}.{name} (known in [{section}]: {known})")
            cfg.values[section][name] = _validated(key, value, where)
    return cfg


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; every problem is one ConfigError line naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    cfg = from_dict(data, str(path))
    cfg.path = path
    return cfg


def save(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write only the keys that differ from the defaults, atomically and durably
    (tmp + fsync + rename + directory fsync: a power cut leaves the old or the
    new file, never none, which would silently mean the default slow store)."""
    from versionfs.blob.files import fsync_dir
    path = Path(path)
    base = defaults()
    doc: dict[str, dict[str, Any]] = {}
    for section, table in cfg.values.items():
        for name, value in table.items():
            if value != base.get(section, {}).get(name):
                doc.setdefault(section, {})[name] = value
    header = ("# versionfs configuration. Only settings that differ from the defaults are\n"
              "# listed; every key is documented in contrib/config.example.toml.\n\n")
    tmp = path.with_name(path.name + ".tmp")
    # 0600: the config is the user's own business (see versionfs.common.privacy).
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(header + tomli_w.dumps(doc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    cfg.path = path


def example_toml() -> str:
    """Every key, documented, with its default value: the text of contrib/config.example.toml."""
    lines = ["# versionfs configuration: STATE_DIR/config.toml",
             "#",
             "# Every key with its default. `versionfs init` writes only the keys that",
             "# differ from these; edit the file and remount for changes to take effect.",
             "# Sizes are bytes or strings with binary units: \"512MiB\", \"20G\".",
             "# Unknown keys and wrong types are refused with an error naming the key."]
    for section, doc in SECTION_DOCS.items():
        keys = [k for k in SCHEMA.values() if k.section == section]
        if not keys:
            continue
        lines += ["", f"# {doc}", f"[{section}]"]
        for key in keys:
            lines += ["# " + line for line in textwrap.wrap(key.doc, 76)]
            rendered = tomli_w.dumps({key.name: key.default}).rstrip("\n")
            lines.append(rendered)
            if key.example is not None:
                lines.append("# e.g. " + tomli_w.dumps({key.name: key.example}).rstrip("\n"))
    return "\n".join(lines) + "\n"

# Issue 6: automatic snapshots, the metrics endpoint, log verbosity (versionfs.fs.scheduler,
# versionfs.common.metrics_endpoint, versionfs.common.logs).
def _interval(v: Any) -> str | None:
    problem = _duration(v)
    if problem or v == "":
        return problem
    return None if parse_duration(v) >= 1 else "must be at least 1s (or \"\" for off)"


def _listen(v: Any) -> str | None:
    if v == "":
        return None
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT, e.g. \"127.0.0.1:9108\" (or \"\" for off)"
    return None


register(Key("snapshots", "interval", "str", "",
             "Take a snapshot automatically this often (e.g. \"1h\", \"30m\", \"1d\"), "
             "skipped when nothing changed, then forget what the keep_* rules do not keep. "
             "Empty = no automatic snapshots.", _interval, example="1h"))
register(Key("metrics", "listen", "str", "",
             "Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. \"127.0.0.1:9108\"). "
             "Empty = off. The endpoint has no authentication: keep it on localhost.",
             _listen, example="127.0.0.1:9108"))
register(Key("mount", "log_level", "str", "info",
             "Daemon log level: debug, info, warning or error (VERSIONFS_LOG_LEVEL overrides).",
             _one_of("debug", "info", "warning", "error")))
