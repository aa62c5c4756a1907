"""python -m gateway: the shadowtune command."""

from gateway.cli import main

main()
