"""Subcommands of `mmjax` that live in their own module: each defines `define_flags()` and `run(argv)`."""
