"""CLI commands, one module per area; each is thin over aimetcli.api.

aimetcli.cli.COMMANDS maps each command name to its module here; the group
imports a module only when its command is used.
"""
