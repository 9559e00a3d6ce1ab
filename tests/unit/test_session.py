"""The one server policy (clara_napari/core/session.py), as a table: no server started, nothing reached."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from clara_napari.core import session
from clara_napari.core.errors import ServerError
from clara_napari.core.session import (
    EMBEDDED,
    FLEET,
    FROM_APP,
    FROM_ENV,
    LOCAL,
    NAMED,
    NONE_NAMED,
    REMOTE,
    ServerChoice,
    choose_server,
    split_servers,
)

APP = SimpleNamespace(address="apphost:8123", protocol="HTTP")
GRPC_APP = SimpleNamespace(address="apphost:8123", protocol="gRPC")
NO_ADDRESS = SimpleNamespace(address=None, protocol="HTTP")
ENV = {"NVIDIA_CLARA_TRTISURI": "envhost:9000"}


@pytest.mark.parametrize("server,environ,inferer,protocol,kind,addresses,reason", [
    ("local", ENV, APP, None, LOCAL, [], NAMED),
    (" LOCAL ", {}, None, None, LOCAL, [], NAMED),
    ("embedded", ENV, APP, None, EMBEDDED, [], NAMED),
    ("named:7000", ENV, APP, None, REMOTE, ["http://named:7000"], NAMED),
    ("grpc://named:7001", ENV, APP, None, REMOTE, ["grpc://named:7001"], NAMED),
    (None, ENV, APP, None, REMOTE, ["http://envhost:9000"], FROM_ENV),
    ("", ENV, APP, None, REMOTE, ["http://envhost:9000"], FROM_ENV),
    ("auto", ENV, APP, "grpc", REMOTE, ["grpc://envhost:9000"], FROM_ENV),
    (None, {}, APP, None, REMOTE, ["http://apphost:8123"], FROM_APP),
    (None, {}, GRPC_APP, None, REMOTE, ["grpc://apphost:8123"], FROM_APP),
    (None, {}, GRPC_APP, "http", REMOTE, ["http://apphost:8123"], FROM_APP),   # --protocol wins over the app
    (None, {}, NO_ADDRESS, None, EMBEDDED, [], NONE_NAMED),
    (None, {}, None, None, EMBEDDED, [], NONE_NAMED),
    (["a:1", "grpc://b:2"], ENV, APP, None, FLEET, ["http://a:1", "grpc://b:2"], NAMED),
    ("a:1, b:2", {}, None, None, FLEET, ["http://a:1", "http://b:2"], NAMED),   # the widget's field
    (None, {"NVIDIA_CLARA_TRTISURI": "e1:1,e2:2"}, APP, None, FLEET, ["http://e1:1", "http://e2:2"], FROM_ENV),
    (["only:5"], {}, None, None, REMOTE, ["http://only:5"], NAMED),
])
def test_the_policy(server, environ, inferer, protocol, kind, addresses, reason, monkeypatch):
    monkeypatch.setattr(session, "_embedded_missing", lambda: None)
    choice = choose_server(server, inferer=inferer, protocol=protocol, environ=environ)
    assert (choice.kind, [str(a) for a in choice.addresses], choice.reason) == (kind, addresses, reason)
    assert choice.describe()


def test_without_the_embedded_server_a_default_run_is_local_and_says_why(monkeypatch):
    monkeypatch.setattr(session, "_embedded_missing", lambda: "the embedded Triton server is not installed")
    choice = choose_server(None, inferer=NO_ADDRESS, environ={})
    assert (choice.kind, choice.fallback) == (LOCAL, True)
    assert "not installed" in choice.describe()
    with pytest.raises(ServerError, match="embedded Triton server was asked for"):
        choose_server("embedded", environ={})
    # a named or configured server does not need it
    assert choose_server(None, inferer=APP, environ={}).kind == REMOTE


@pytest.mark.parametrize("server,match", [
    (["local", "a:1"], "cannot be mixed"),
    ("a:1,embedded", "cannot be mixed"),
    (["a:1", "http://a:1"], "named twice"),
    ("host:notaport", "port"),
    ("ftp://host:1", "unknown scheme"),
])
def test_refused_server_names(server, match):
    with pytest.raises(ServerError, match=match):
        choose_server(server, environ={})


def test_bad_protocol_is_refused():
    with pytest.raises(ServerError, match="protocol 'udp'"):
        choose_server("a:1", protocol="udp", environ={})


def test_split_and_secrets():
    assert split_servers(None) == [] and split_servers(" a , b ") == ["a", "b"] and split_servers(["a,b", "c"]) == [
        "a", "b", "c"]
    choice = choose_server("http://user:secret@host:1", environ={})
    assert "secret" not in choice.describe() and "secret" not in repr(choice)
    assert choice.address.userinfo == "user:secret"   # kept for basic auth, never shown


def test_choice_is_a_value():
    one = choose_server("a:1", environ={})
    assert one == ServerChoice(REMOTE, one.addresses, "http", NAMED)
    assert hash(one) == hash(ServerChoice(REMOTE, one.addresses, "http", NAMED))
