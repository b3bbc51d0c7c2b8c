"""Commands registered by name and imported when run.

`karma --help` lists the commands from the table in cli/__init__.py (name, "module:attribute",
one-line help) without importing a command's module: between them they load faust, the stages
and the model backends, most of a second. `karma COMMAND ...` (or `karma COMMAND --help`)
imports that command's module alone, and builds the command as typer would have at start.
tests/cli/test_lazy.py holds each one-line help to the command's own docstring.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import typer
from typer.core import DEFAULT_MARKUP_MODE, MarkupMode, TyperCommand, TyperGroup

if TYPE_CHECKING:
    from typer._click import Command, Context, HelpFormatter  # typer carries its own click

__all__ = ["LazyCommand", "LazyCommands", "LazyGroup", "load"]


@dataclass(frozen=True)
class LazyCommand:
    """One command of the table: its name, where it is defined ("module:attribute", a function
    or, for a group of commands such as `broker`, a typer.Typer), and its help as `karma --help`
    lists it (the first paragraph of the command's docstring, or the sub-app's help)."""

    name: str
    target: str
    help: str


def load(entry: LazyCommand, markup_mode: MarkupMode = DEFAULT_MARKUP_MODE) -> Command:
    """Imports the entry's module and builds its command, named as the table names it."""
    module_name, _, attribute = entry.target.partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):
        command: Command = typer.main.get_group(target)
    else:
        # A typer app of this one command: typer builds its parameters from the signature.
        single = typer.Typer(add_completion=False, rich_markup_mode=markup_mode)
        single.command(entry.name)(target)
        command = typer.main.get_command(single)
    command.name = entry.name
    return command


class LazyCommands(MutableMapping[str, "Command"]):
    """A group's commands by name, in the table's order: each is imported and built at its first
    lookup. Commands added the usual way (`add_command`) come after the table's."""

    def __init__(
        self, table: tuple[LazyCommand, ...], added: MutableMapping[str, Command], markup_mode: MarkupMode
    ) -> None:
        self.table = {entry.name: entry for entry in table}
        self._markup_mode = markup_mode
        self._built: dict[str, Command] = dict(added)
        self._order = [*self.table, *(name for name in added if name not in self.table)]

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            self._built[name] = load(self.table[name], self._markup_mode)
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._built[name] = command
        if name not in self._order:
            self._order.append(name)

    def __delitem__(self, name: str) -> None:
        self._order.remove(name)
        self.table.pop(name, None)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._order

    def summary(self, name: str) -> Command | None:
        """A stand-in that carries the name and help of a table command only (None for others):
        what a list of commands reads, without the import."""
        entry = self.table.get(name)
        if entry is None:
            return None
        return TyperCommand(entry.name, help=entry.help, short_help=entry.help)


class LazyGroup(TyperGroup):
    """A typer group whose commands are those of `table`, imported when run. typer builds the
    group from its class (`typer.Typer(cls=...)`), so a subclass sets the table."""

    table: ClassVar[tuple[LazyCommand, ...]] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands: LazyCommands = LazyCommands(self.table, self.commands, self.rich_markup_mode)
        self._listing = False

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if self._listing:
            summary = self.commands.summary(cmd_name)
            if summary is not None:
                return summary
        if cmd_name not in self.commands:
            return None
        # Indexed, not `.get()`: a KeyError raised while importing a command is not "no such command".
        return self.commands[cmd_name]

    def list_commands(self, ctx: Context) -> list[str]:
        return list(self.commands)  # the names, without building the commands (TyperGroup's reads .items())

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        # The help's list of commands reads each one's name and help: the table's stand-ins.
        # Formatted by click, not typer's rich: typer's rich help imports rich.markdown and
        # markdown-it (about 0.15 s, half of `karma --help`); a command's own help stays rich.
        self._listing = True
        try:
            super(TyperGroup, self).format_help(ctx, formatter)
        finally:
            self._listing = False
