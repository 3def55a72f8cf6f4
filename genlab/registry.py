"""The registry of methods, at the bottom of the layers so that every layer above can ask it.

Each family registers its class once (``@register`` in :mod:`genlab.methods.base`, applied in the family's own
file); config validation, training, evaluation, ``genlab compare``, the API and the CLI look methods up here by
name, so no method's name is written anywhere else. The registry knows nothing about what a method is: the
protocol lives in :mod:`genlab.methods.base`.
"""
from __future__ import annotations

import difflib

METHODS: dict[str, type] = {}


def add(cls: type) -> type:
    """Register a method class under ``cls.name`` (a second class of the same name is a programming error)."""
    name = cls.name
    old = METHODS.get(name)
    if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"two methods are named {name!r}: {old.__module__}.{old.__qualname__} and "
                         f"{cls.__module__}.{cls.__qualname__}")
    METHODS[name] = cls
    return cls


def names() -> tuple:
    return tuple(METHODS)


def method_class(name: str) -> type:
    """The class of method ``name``, or a ValueError naming the known methods and the closest one."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"method={name!r} is not a known method{hint} Known: {', '.join(METHODS)}")
    return METHODS[name]


def sections() -> dict:
    """Config sections that methods declare in their own files (``section`` name -> dataclass)."""
    out = {}
    for cls in METHODS.values():
        sec = getattr(cls, "section", None)
        if sec is not None and getattr(cls, "Section", None) is not None:
            out.setdefault(sec, cls.Section)
    return out


def option_fields() -> dict:
    """Every sampling option of every method: name -> (dataclasses.Field, [method names taking it])."""
    import dataclasses

    out: dict = {}
    for name, cls in METHODS.items():
        opts = getattr(cls, "Options", None)
        if opts is None:
            continue
        for f in dataclasses.fields(opts):
            if f.name in out:
                out[f.name][1].append(name)
            else:
                out[f.name] = (f, [name])
    return out


def takers(option: str) -> list:
    """The methods whose sampling options or inputs include ``option``."""
    return [n for n, c in METHODS.items()
            if option in getattr(c, "option_names", lambda: ())() or option in getattr(c, "inputs", ())]
