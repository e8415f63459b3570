"""`regionlock token create|list`: manage the Admin token file; a new secret is printed alone on stdout."""

from __future__ import annotations

import argparse
import sys

from regionlock.service.cli.errors import exit_usage
from regionlock.service.server.auth import ROLES, TokenFileError, TokenStore, create_token


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `token` command and its `create` and `list` subcommands."""
    token = subparsers.add_parser("token", help="manage Admin API tokens")
    commands = token.add_subparsers(dest="token_command", required=True, metavar="{create,list}")

    create = commands.add_parser("create", help="add a token and print its secret (once, alone on standard output)")
    create.add_argument("name", help="token name, recorded as the actor in the audit trail")
    create.add_argument("--role", required=True, choices=sorted(ROLES), help="viewer reads; operator also writes")
    create.add_argument("--tokens", required=True, metavar="FILE", help="token file (created if missing)")
    create.set_defaults(func=_create)

    listing = commands.add_parser("list", help="show token names and roles (never secrets)")
    listing.add_argument("--tokens", required=True, metavar="FILE", help="token file")
    listing.set_defaults(func=_list)


def _create(args: argparse.Namespace) -> int:
    try:
        secret = create_token(args.tokens, args.name, args.role)
    except TokenFileError as exc:
        exit_usage("regionlock token create", exc)
    # the secret goes to stdout alone so `TOKEN=$(regionlock token create ...)` captures exactly it
    print(
        f"created {args.role} token {args.name!r} in {args.tokens}; the secret is shown only once",
        file=sys.stderr,
    )
    print(secret, flush=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        store = TokenStore.load(args.tokens)
    except TokenFileError as exc:
        exit_usage("regionlock token list", exc)
    for entry in store.entries:
        print(f"{entry.name}\t{entry.role}\t{entry.create_time}")
    return 0
