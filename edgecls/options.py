"""Options declared once, as frozen dataclass fields: their help, whether only --int8 uses
them, and how the command line spells them. A backend's export options, export()'s own
(exporting.CheckOptions) and the preprocessing options are all declared this way; the CLI
makes its flags from the declarations, and parse() checks and types what a user gave."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from edgecls.errors import UnsupportedOptionError


def option(help: str, *, int8_only: bool = False, default: Any = None, **cli: Any) -> Any:
    """One export option of a backend: its help text, whether only --int8 uses it, and the
    argparse settings its type alone does not imply (nargs, const)."""
    return field(default=default, metadata={"help": help, "int8_only": int8_only, "cli": cli})


@dataclass(frozen=True)
class Declared:
    """An export option as the CLI and the checks see it."""
    name: str
    kind: type                 # int, float, str, bool, tuple (of str) or object (as given)
    help: str
    int8_only: bool
    cli: dict[str, Any]

    @property
    def flag(self) -> str:
        return flag_of(self.name)


def flag_of(name: str) -> str:
    """The command-line flag of an option name (calib_method -> --calib-method)."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class ExportOptions:
    """A backend's export options, declared once as the fields of a frozen subclass (made
    with option()). `parse` turns the user's dict into it; the CLI makes its flags from
    `declared()`. This base class is the row of a backend that takes none."""

    @classmethod
    def declared(cls) -> list[Declared]:
        hints = typing.get_type_hints(cls)
        return [Declared(f.name, _kind(hints[f.name]), f.metadata["help"],
                         f.metadata["int8_only"], f.metadata["cli"])
                for f in dataclasses.fields(cls)]

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def parse(cls, values: dict[str, Any], precision: str, fmt: str) -> "ExportOptions":
        """The user's options checked and typed, once: None, False and empty lists mean
        "not given"; an unknown option names its flag; an --int8 option without --int8 is
        refused; then the backend's own check() of the values."""
        given = {k: v for k, v in values.items() if not _absent(v)}
        declared = {d.name: d for d in cls.declared()}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            flags = ", ".join(flag_of(u) for u in unknown)
            raise UnsupportedOptionError(f"--to {fmt} does not take {flags}")
        misplaced = sorted(k for k in given if declared[k].int8_only and precision != "int8")
        if misplaced:
            raise UnsupportedOptionError(f"option(s) {', '.join(misplaced)} apply only to --int8")
        options = cls(**{k: _convert(declared[k], v) for k, v in given.items()})
        options.check(precision)
        return options

    def given(self) -> list[Declared]:
        """The options that were set (not None, False or empty)."""
        return [d for d in self.declared() if not _absent(getattr(self, d.name))]

    def check(self, precision: str) -> None:
        """The backend's rules on values (choices, ranges, combinations with the precision):
        UnsupportedOptionError before any model is built."""


def _absent(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (list, tuple)) and not value)


def _kind(hint: Any) -> type:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        present = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = present[0] if len(present) == 1 else object
    if typing.get_origin(hint) is tuple:
        return tuple
    return hint if hint in (int, float, str, bool) else object


_KIND_NAMES = {int: "an integer", float: "a number", str: "text"}


def _convert(option: Declared, value: Any) -> Any:
    if option.kind is tuple:
        return (value,) if isinstance(value, str) else tuple(value)
    if option.kind in _KIND_NAMES:
        try:
            return option.kind(value)
        except (TypeError, ValueError):
            raise UnsupportedOptionError(f"{option.name} must be {_KIND_NAMES[option.kind]}, "
                                         f"not {value!r}") from None
    return bool(value) if option.kind is bool else value


__all__ = ["option", "Declared", "flag_of", "ExportOptions"]
