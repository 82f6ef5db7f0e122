"""Editor options: one table per editor gives both the command line flags (`--reasoning-steps 4`) and the manifest
keys (`"reasoning_steps": 4`), with their types, defaults and allowed values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import InputError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Option:
    """One editor setting. `default` None means "the editor's own choice" (the help says which)."""

    name: str
    type: type
    default: object
    help: str
    choices: tuple = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def convert(self, value):
        """`value` (a JSON value, or the text of a CSV cell or a flag) as this option's type."""
        if value is None:
            return None
        try:
            converted = _convert(self.type, value)
        except (TypeError, ValueError):
            raise InputError(f"Option '{self.name}' takes {_TYPE_WORDS[self.type]}, got {value!r}.",
                             f"Fix it in the manifest or on the command line ({self.name}: {self.help}).") from None
        if self.choices and converted not in self.choices:
            raise InputError(f"Option '{self.name}' is {converted!r}; it takes one of: {', '.join(self.choices)}.",
                             f"Pick one of {', '.join(self.choices)}.")
        return converted


_TYPE_WORDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}


def _convert(kind: type, value):
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE + _FALSE:
            return text in _TRUE
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(float(value)) if isinstance(value, str) and "." in value else int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def resolve(options: Iterable[Option], base: Mapping, item: Mapping, editor: str) -> dict:
    """The settings of one item: `base` (the command line's values, missing = the option's default) overridden by
    the item's own `item` options. An unknown key or a value of the wrong type raises InputError."""
    table = {o.name: o for o in options}
    unknown = sorted(set(item) - set(table))
    if unknown:
        raise InputError(f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for the "
                         f"{editor} editor.", f"Options it takes: {', '.join(sorted(table))}.")
    values = {name: o.convert(base.get(name, o.default)) for name, o in table.items()}
    values.update({name: table[name].convert(value) for name, value in item.items() if value is not None})
    return values
