from aimetcli.cli import main

main()
