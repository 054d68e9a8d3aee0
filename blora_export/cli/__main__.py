"""`python -m blora_export.cli ...`: the same as the `blora-export` command."""

from . import main

main(prog_name="blora-export")
