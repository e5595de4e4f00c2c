"""Record types: the index keys a type declares, and the registry every RecordDB in the process indexes by."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Iterable

from ..backup import canonical_json

__all__ = ["Type", "TypeKey", "register_type", "registered_type"]

TYPE_INDEX = "@type"  # implicit key every typed record is indexed under
MAX_NAME_BYTES = 64


@dataclass(frozen=True)
class TypeKey:
    """One secondary index: the fields it covers and whether values are unique."""

    name: str
    fields: tuple[str, ...]
    unique: bool = False

    def __init__(self, name: str, fields: Iterable[str], unique: bool = False):
        fields = (fields,) if isinstance(fields, str) else tuple(fields)
        if not fields:
            raise ValueError(f"type key {name!r} has no fields")
        _check_name(name, "key name")
        if name == TYPE_INDEX:
            raise ValueError(f"{TYPE_INDEX!r} is reserved for the implicit type index")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "unique", bool(unique))


@dataclass(frozen=True)
class Type:
    """A record type: its name, its index keys and a definition version."""

    name: str
    keys: tuple[TypeKey, ...] = field(default_factory=tuple)
    version: int = 0

    def __init__(self, name: str, keys: Iterable[TypeKey] = (), version: int = 0):
        _check_name(name, "type name")
        keys = tuple(keys)
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"type {name!r} declares a key name twice: {names}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "version", int(version))

    def definition(self) -> bytes:
        return canonical_json({"name": self.name, "version": self.version,
                               "keys": [{"name": k.name, "fields": list(k.fields), "unique": k.unique}
                                        for k in self.keys]})

    @classmethod
    def from_definition(cls, raw: bytes) -> "Type":
        doc = json.loads(raw)
        return cls(doc["name"], [TypeKey(k["name"], k["fields"], k["unique"]) for k in doc["keys"]],
                   doc["version"])

    def key_for(self, fields: Iterable[str]) -> TypeKey | None:
        wanted = set(fields)
        return next((k for k in self.keys if set(k.fields) == wanted), None)


_registry: dict[str, Type] = {}
_registry_lock = threading.Lock()


def register_type(t: Type) -> None:
    """Make ``t`` the definition every RecordDB in this process indexes by."""
    with _registry_lock:
        _registry[t.name] = t


def registered_type(name: str) -> Type | None:
    return _registry.get(name)


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty str, got {name!r}")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{what} {name[:40]!r}... is over {MAX_NAME_BYTES} bytes")
