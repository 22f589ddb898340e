"""``latent-rag keys new|show|revoke``: provision, inspect and revoke link keys (never prints a secret)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from latent_rag_ros.cli.args import add_config_args, config_from_args
from latent_rag_ros.security.keys import ROLES, KeyFileError, list_keys, load_key, new_key, resolve_keys_dir, revoke_key


def _keys_dir(args: argparse.Namespace) -> str:
    """``--dir``, else the config's ``link.keys_dir``, else $ROS_HOME/latent_rag_keys."""
    if args.dir:
        return args.dir
    cfg = config_from_args(args)
    return str(resolve_keys_dir(cfg.resolve_path(cfg.link.keys_dir) if cfg.link.keys_dir else ""))


def _public(key: Any) -> dict[str, str]:
    return {"id": key.key_id, "role": key.role, "state": "revoked" if key.revoked else "valid",
            "created": key.created, "revoked": key.revoked, "fingerprint": key.fingerprint, "file": key.path}


def cmd_new(args: argparse.Namespace) -> int:
    """Create a key file (0600) with a fresh secret."""
    key = new_key(_keys_dir(args), args.id, args.role, replace=args.replace)
    print(json.dumps(_public(key)))
    print(f"created {key.role} key {key.key_id!r} in {key.path} (0600). Give a robot ONLY its own file; the store "
          "reads every *.key file of its keys directory and picks up changes without a restart.", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """List keys (id, role, state, dates, fingerprint, file): never the secret."""
    d = _keys_dir(args)
    if args.id:
        # lazy: heavy (torch, faiss, cv2): loaded only when this subcommand runs
        from latent_rag_ros.security.keys import key_path

        keys, errors = [load_key(key_path(d, args.id))], []
    else:
        keys, errors = list_keys(d)
    for key in keys:
        print(json.dumps(_public(key)))
    for err in errors:
        print(f"unreadable: {err}", file=sys.stderr)
    if not keys and not errors:
        print(f"no keys in {resolve_keys_dir(d)} (create one with `latent-rag keys new ID --role robot`)",
              file=sys.stderr)
    return 1 if errors else 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Erase a key's secret and mark it revoked; a running store refuses it from its next request on."""
    key = revoke_key(_keys_dir(args), args.id)
    print(json.dumps(_public(key)))
    return 0


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except KeyFileError as exc:
            print(f"latent-rag keys: {exc}", file=sys.stderr)
            return 2
    return run


def register(subparsers: Any, bench_subparsers: Any) -> None:
    """Add ``keys {new,show,revoke}`` to the ``latent-rag`` parser."""
    del bench_subparsers
    keys = subparsers.add_parser("keys", help="link keys for the trusted store (robot and admin)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", default="", help="keys directory (default: config link.keys_dir or "
                                                 "$ROS_HOME/latent_rag_keys)")
        add_config_args(p, "link.keys_dir")

    p = ksub.add_parser("new", help="create a key file with a fresh random secret (0600)")
    common(p)
    p.add_argument("id", help="key id (file name): letters, digits, '_.-'")
    p.add_argument("--role", choices=ROLES, default="robot", help="robot: may retrieve; admin: may add/remove")
    p.add_argument("--replace", action="store_true", help="replace the secret of an existing key (rotation in place)")
    p.set_defaults(func=_guard(cmd_new))

    p = ksub.add_parser("show", help="list keys without their secrets")
    common(p)
    p.add_argument("id", nargs="?", default="", help="one key id (default: all)")
    p.set_defaults(func=_guard(cmd_show))

    p = ksub.add_parser("revoke", help="revoke a key (its secret is erased; the store refuses it at once)")
    common(p)
    p.add_argument("id")
    p.set_defaults(func=_guard(cmd_revoke))
