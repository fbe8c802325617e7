"""`python -m regcache.tui.cli`: the same as the `regcache` command."""

from regcache.tui.cli import main

main()
