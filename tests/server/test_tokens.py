"""The token file, secret verification, the role table and `regionlock token create|list`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat

import pytest

from regionlock.admin.v1 import admin_pb2
from regionlock.service.cli.token import register
from regionlock.service.errors import PermissionDenied, Unauthenticated
from regionlock.service.server.auth import (
    METHOD_ROLES,
    Principal,
    TokenFileError,
    TokenStore,
    authorize,
    create_token,
)

ADMIN = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
READS = {"GetOverride", "ListOverrides", "ListAuditEvents", "GetStatus"}


@pytest.fixture
def tokens_path(tmp_path):
    return tmp_path / "tokens.json"


def test_created_tokens_authenticate_as_their_name_and_role(tokens_path):
    viewer = create_token(tokens_path, "ci-reader", "viewer")
    operator = create_token(tokens_path, "alice@example.com", "operator")
    assert viewer.startswith("rl_") and viewer != operator
    store = TokenStore.load(tokens_path)
    assert store.authenticate(f"Bearer {viewer}") == Principal("ci-reader", "viewer")
    assert store.authenticate(f"bearer  {operator} ") == Principal("alice@example.com", "operator")


def test_the_file_is_private_and_holds_no_secret(tokens_path):
    secret = create_token(tokens_path, "alice", "operator")
    assert stat.S_IMODE(os.stat(tokens_path).st_mode) == 0o600
    text = tokens_path.read_text()
    assert secret not in text and secret.split("_", 2)[2] not in text
    [entry] = json.loads(text)["tokens"]
    assert (entry["name"], entry["role"]) == ("alice", "operator")
    assert [p.name for p in tokens_path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_create_refuses_duplicates_and_bad_names_or_roles(tokens_path):
    create_token(tokens_path, "alice", "operator")
    for name, role, message in [
        ("alice", "viewer", "already has"),
        ("", "viewer", "token name"),
        ("has space", "viewer", "token name"),
        ("x" * 65, "viewer", "token name"),
        ("bob", "admin", "role"),
    ]:
        with pytest.raises(TokenFileError, match=message):
            create_token(tokens_path, name, role)
    assert [e.name for e in TokenStore.load(tokens_path).entries] == ["alice"]


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "rl_0123456789abcdef_" + "A" * 43,
        "Bearer nonsense",
    ],
)
def test_missing_or_malformed_credentials_are_unauthenticated(tokens_path, value):
    create_token(tokens_path, "alice", "operator")
    with pytest.raises(Unauthenticated):
        TokenStore.load(tokens_path).authenticate(value)


def test_a_wrong_secret_or_unknown_id_is_unauthenticated(tokens_path):
    secret = create_token(tokens_path, "alice", "operator")
    prefix, token_id, random = secret.split("_", 2)
    wrong_secret = f"{prefix}_{token_id}_{'A' if random[0] != 'A' else 'B'}{random[1:]}"
    unknown_id = f"{prefix}_{'0' * 16 if token_id != '0' * 16 else '1' * 16}_{random}"
    store = TokenStore.load(tokens_path)
    for value in [wrong_secret, unknown_id, secret[:-1], secret + "A"]:
        with pytest.raises(Unauthenticated) as caught:
            store.authenticate(f"Bearer {value}")
        assert value not in str(caught.value) and random not in str(caught.value)


def test_only_the_printed_spelling_of_a_secret_is_accepted(tokens_path):
    secret = create_token(tokens_path, "alice", "operator")
    store = TokenStore.load(tokens_path)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for last in alphabet.replace(secret[-1], ""):
        with pytest.raises(Unauthenticated):
            store.authenticate(f"Bearer {secret[:-1]}{last}")


def test_roles_cover_every_admin_method_and_viewers_only_read(tokens_path):
    methods = {f"/{ADMIN.full_name}/{m.name}" for m in ADMIN.methods}
    assert set(METHOD_ROLES) == methods
    for method in methods:
        authorize(Principal("op", "operator"), method)
        if method.rsplit("/", 1)[1] in READS:
            authorize(Principal("v", "viewer"), method)
        else:
            with pytest.raises(PermissionDenied, match="may not call"):
                authorize(Principal("v", "viewer"), method)
    with pytest.raises(PermissionDenied):
        authorize(Principal("op", "operator"), f"/{ADMIN.full_name}/SomethingNew")  # unknown: nobody


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[]",
        '{"format": "other", "version": 1, "tokens": []}',
        '{"format": "regionlock-tokens", "version": 1, "tokens": [{"name": "a"}]}',
        "[" * 3000 + "]" * 3000,  # deeper than json.loads can recurse
    ],
)
def test_a_malformed_token_file_is_a_clear_error(tokens_path, content):
    tokens_path.write_text(content)
    with pytest.raises(TokenFileError, match=str(tokens_path)):
        TokenStore.load(tokens_path)


def test_a_missing_token_file_says_how_to_create_one(tokens_path):
    with pytest.raises(TokenFileError, match="token create"):
        TokenStore.load(tokens_path)


def test_a_readable_token_file_is_warned_about(tokens_path, caplog):
    create_token(tokens_path, "alice", "operator")
    os.chmod(tokens_path, 0o644)
    with caplog.at_level(logging.WARNING):
        TokenStore.load(tokens_path)
    assert "0600" in caplog.text


def _run(argv):
    parser = argparse.ArgumentParser(prog="regionlock")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_create_prints_the_secret_alone_on_stdout(tokens_path, capsys):
    assert _run(["token", "create", "alice", "--role", "operator", "--tokens", str(tokens_path)]) == 0
    out, err = capsys.readouterr()
    secret = out.removesuffix("\n")
    assert out == secret + "\n" and "\n" not in secret and secret not in err and "alice" in err
    assert TokenStore.load(tokens_path).authenticate(f"Bearer {secret}").name == "alice"


def test_cli_list_shows_names_and_roles_never_secrets(tokens_path, capsys):
    secret = create_token(tokens_path, "alice", "operator")
    create_token(tokens_path, "bob", "viewer")
    assert _run(["token", "list", "--tokens", str(tokens_path)]) == 0
    out, _ = capsys.readouterr()
    assert [line.split("\t")[:2] for line in out.splitlines()] == [["alice", "operator"], ["bob", "viewer"]]
    entry = json.loads(tokens_path.read_text())["tokens"][0]
    assert secret not in out and entry["sha256"] not in out and entry["salt"] not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "create", "alice", "--role", "operator", "--tokens", "{path}"],  # duplicate
        ["token", "create", "bad name", "--role", "viewer", "--tokens", "{path}"],
        ["token", "list", "--tokens", "{missing}"],
    ],
)
def test_cli_bad_usage_is_one_stderr_line_and_exit_2(tokens_path, capsys, argv):
    create_token(tokens_path, "alice", "operator")
    argv = [a.format(path=tokens_path, missing=tokens_path.with_name("none.json")) for a in argv]
    with pytest.raises(SystemExit) as caught:
        _run(argv)
    out, err = capsys.readouterr()
    assert caught.value.code == 2 and out == "" and len(err.strip().splitlines()) == 1
