"""CLI commands, one module per area; each is thin over aimetcli.api."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    from aimetcli.commands import bias, equalize, export, fold, ptq, quantsim

    for module in (fold, equalize, bias, quantsim, export, ptq):
        for command in module.COMMANDS:
            group.add_command(command)
