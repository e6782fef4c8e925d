from aimetcli.cli import main

main(prog_name="aimetcli")
