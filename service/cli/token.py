"""`regionlock token create|list|revoke`: manage the Admin token file; a new secret is printed alone on stdout.

The file is the one `serve` uses: --tokens, else REGIONLOCK_TOKENS or the config file's `tokens`, else
DATA_DIR/tokens.json (--data-dir, REGIONLOCK_DATA_DIR, ...). A running server notices a change within about
half a second (auth.TokenFile): no reload is needed, and it records the change in the audit trail.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regionlock.service.cli.errors import exit_usage
from regionlock.service.server.auth import ROLES, TokenFileError, TokenStore, create_token, revoke_token
from regionlock.service.server.settings import SettingsError, load_settings


def _file_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--tokens", metavar="FILE", help=f"{what} (default: the one `serve` uses)")
    parser.add_argument("--data-dir", metavar="DIR", help="data directory (default ./var): its tokens.json")
    parser.add_argument("--config", metavar="FILE", help="TOML config file of `serve` (its tokens, data_dir)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `token` command and its `create`, `list` and `revoke` subcommands."""
    token = subparsers.add_parser("token", help="manage Admin API tokens")
    commands = token.add_subparsers(dest="token_command", required=True, metavar="{create,list,revoke}")

    create = commands.add_parser("create", help="add a token and print its secret (once, alone on standard output)")
    create.add_argument("name", help="token name, recorded as the actor in the audit trail")
    create.add_argument("--role", required=True, choices=sorted(ROLES), help="viewer reads; operator also writes")
    _file_arguments(create, "token file, created if missing")
    create.set_defaults(func=_create)

    listing = commands.add_parser("list", help="show token names and roles (never secrets)")
    _file_arguments(listing, "token file")
    listing.set_defaults(func=_list)

    revoke = commands.add_parser("revoke", help="remove a token: calls with it are refused within a second")
    revoke.add_argument("name", help="the token's name")
    _file_arguments(revoke, "token file")
    revoke.set_defaults(func=_revoke)


def tokens_path(args: argparse.Namespace, prog: str) -> Path:
    """The token file `serve` would use with the same flags, environment and config file."""
    try:
        settings = load_settings({"tokens": args.tokens, "data_dir": args.data_dir, "config": args.config})
    except SettingsError as exc:
        exit_usage(prog, exc)
    return settings.tokens_path


def _create(args: argparse.Namespace) -> int:
    path = tokens_path(args, "regionlock token create")
    try:
        secret = create_token(path, args.name, args.role)
    except TokenFileError as exc:
        exit_usage("regionlock token create", exc)
    # the secret goes to stdout alone so `TOKEN=$(regionlock token create ...)` captures exactly it
    print(f"created {args.role} token {args.name!r} in {path}; the secret is shown only once", file=sys.stderr)
    print(secret, flush=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        store = TokenStore.load(tokens_path(args, "regionlock token list"))
    except TokenFileError as exc:
        exit_usage("regionlock token list", exc)
    for entry in store.entries:
        print(f"{entry.name}\t{entry.role}\t{entry.create_time}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    path = tokens_path(args, "regionlock token revoke")
    try:
        entry = revoke_token(path, args.name)
    except TokenFileError as exc:
        exit_usage("regionlock token revoke", exc)
    print(f"revoked {entry.role} token {entry.name!r} in {path}", file=sys.stderr)
    return 0
