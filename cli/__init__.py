"""The `autoprompt` command line."""
