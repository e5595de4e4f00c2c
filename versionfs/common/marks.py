"""Commands defined by marking functions: one way for the CLI and the ctl file.

A command group (a module) marks each of its command functions with an
attribute holding a description object; the one table of commands is built by
collecting the marked functions of the groups, in order. A function a group
merely imports from elsewhere is not its command.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Iterable


def collect_marked(modules: Iterable[ModuleType], attr: str, kind: type) -> dict[str, Any]:
    """name -> the `kind` object each module's own functions carry under `attr`
    (`.name` is its key); a name defined twice is a programming error."""
    table: dict[str, Any] = {}
    for module in modules:
        for value in vars(module).values():
            mark = getattr(value, attr, None)
            if isinstance(mark, kind) and value.__module__ == module.__name__:
                if mark.name in table:
                    raise RuntimeError(f"command {mark.name!r} defined twice")
                table[mark.name] = mark
    return table
