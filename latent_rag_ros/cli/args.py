"""The flags every ``latent-rag`` subcommand shares (``--config``/``--set``), defined once."""

from __future__ import annotations

import argparse
from typing import Any

from latent_rag_ros.config import Config, absolute_paths, default_config_path, load_config, parse_overrides


def add_config_args(p: argparse.ArgumentParser, what: str = "") -> None:
    """Add ``--config FILE`` and repeatable ``--set KEY=VALUE`` (``what``: what the file is read for)."""
    p.add_argument("--config", default=None,
                   help=f"parameter file{f' (for {what})' if what else ''} "
                        "(default: the package's config/latent_rag.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set protector.m=5 (repeatable)")


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    """Config from ``--config`` (or the packaged default) and ``--set`` overrides."""
    path = args.config or default_config_path()
    overrides = absolute_paths(parse_overrides(getattr(args, "set", [])))  # typed in a shell: relative to cwd
    overrides.update(extra or {})
    return load_config(path, overrides)
