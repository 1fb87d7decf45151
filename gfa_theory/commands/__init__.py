"""Subcommands of the gfa CLI."""
