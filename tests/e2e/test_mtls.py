"""Mutual TLS client identity through the local stack's TLS front door (tests/src/tls_front.rs),
which does what an API Gateway custom domain with a truststore does: the handshake verifies the
client certificate against the CA, and the function receives it in
`requestContext.authentication.clientCert`.

One instance accepts bearer keys, OAuth tokens (from the real local authorization server) and
client certificates at once."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from helpers import KEY_CACHE_TTL_SECS, rpc_error, rpc_result, tool_call, unique
from test_oauth import authz, ensure_introspection_secret, oauth_overrides  # noqa: F401  (fixture)

ADA = {"email": "ada@example.com"}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tollgate Tests")])


def _issue(subject: str, issuer_key, issuer_name: x509.Name, *, ca: bool = False, server: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def ssl(self, client: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if client:
            cert, key = self.client(client)
            ctx.load_cert_chain(str(cert), str(key))
        return ctx


def _write(path: Path, cert=None, key=None) -> None:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    _, ca = _issue("Test Truststore CA", ca_key, _name("Test Truststore CA"), ca=True)
    # Self-signed CA: re-sign with its own key.
    ca = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject)
          .public_key(ca_key.public_key()).serial_number(ca.serial_number)
          .not_valid_before(ca.not_valid_before_utc).not_valid_after(ca.not_valid_after_utc)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(d / "ca.pem", cert=ca)
    server_key, server = _issue("127.0.0.1", ca_key, ca.subject, server=True)
    _write(d / "server.pem", cert=server)
    _write(d / "server.key", key=server_key)
    for name in ("bound", "unbound", "paired"):
        key, cert = _issue(f"{name}-client", ca_key, ca.subject)
        _write(d / f"{name}.pem", cert=cert)
        _write(d / f"{name}.key", key=key)
    # A client certificate from a CA outside the truststore.
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    key, cert = _issue("rogue-client", rogue_key, _name("Rogue CA"))
    _write(d / "rogue.pem", cert=cert)
    _write(d / "rogue.key", key=key)
    return Pki(dir=d, ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key")


def tls_overrides(pki: Pki) -> dict[str, str]:
    return dict(TOLLGATE_DEV_TLS_CERT=str(pki.server_cert), TOLLGATE_DEV_TLS_KEY=str(pki.server_key),
                TOLLGATE_DEV_TLS_CLIENT_CA=str(pki.ca))


@pytest.fixture(scope="module")
def mtls(stack, module_processes, authz, pki):  # noqa: F811
    """A TLS `tollgate-dev` accepting keys, OAuth tokens and client certificates."""
    ensure_introspection_secret(stack)
    overrides = {**oauth_overrides(stack, authz), **tls_overrides(pki),
                 "TOLLGATE_AUTH_METHODS": "api_key,oauth,mtls"}
    return module_processes.extra_instance(stack, **overrides)


@pytest.fixture(scope="module")
def bound_agent(stack, pki) -> str:
    agent = stack.create_agent(unique("mtls"), ["customers:read"])
    out = stack.cli("agents", "bind-cert", agent, "--pem", str(pki.client("bound")[0])).json()
    assert out["binding"].startswith("sha256:") and out["agent_id"] == agent, out
    return agent


def client(pki: Pki, cert: str | None) -> httpx2.Client:
    return httpx2.Client(verify=pki.ssl(cert), trust_env=False, timeout=30)


@pytest.mark.anyio
async def test_official_client_authenticates_with_its_certificate_alone(mtls, pki, bound_agent) -> None:
    offset = mtls.stdout_offset()
    async with httpx2.AsyncClient(verify=pki.ssl("bound"), trust_env=False, timeout=30) as http:
        async with streamable_http_client(mtls.gateway_url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                assert [t.name for t in listed.tools] == ["lookup_customer"], "the agent's scopes"
                result = await session.call_tool("lookup_customer", ADA)
                assert result.is_error is False, result
    time.sleep(0.3)
    audits = [json.loads(line) for line in mtls.stdout_lines_since(offset) if '"kind":"audit"' in line]
    assert [(a["agent_id"], a["auth_method"], a["status"]) for a in audits] == [(bound_agent, "mtls", "success")]


def test_keys_oauth_tokens_and_certificates_in_one_instance(mtls, pki, authz, stack, bound_agent) -> None:  # noqa: F811
    with client(pki, None) as http:
        assert rpc_result(tool_call(http, mtls.gateway_url, stack.demo_token, "lookup_customer", ADA))["isError"] is False
        token = authz.mint({"aud": mtls.gateway_url, "client_id": unique("tls-oauth"), "scope": "customers:read"})
        assert rpc_result(tool_call(http, mtls.gateway_url, token, "lookup_customer", ADA))["isError"] is False
        rpc_error(tool_call(http, mtls.gateway_url, None, "lookup_customer", ADA), 401, -31001)
    with client(pki, "bound") as http:
        assert rpc_result(tool_call(http, mtls.tool_url("lookup_customer"), None, "lookup_customer", ADA))["isError"] is False


def test_unbound_certificate_is_refused(mtls, pki) -> None:
    with client(pki, "unbound") as http:
        resp = tool_call(http, mtls.gateway_url, None, "lookup_customer", ADA)
    err = rpc_error(resp, 401, -31001)
    assert err["data"]["reason"] == "unknown_certificate", err
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]


def test_certificate_outside_the_truststore_fails_the_handshake(mtls, pki) -> None:
    with pytest.raises(httpx2.HTTPError):
        with client(pki, "rogue") as http:
            tool_call(http, mtls.gateway_url, None, "lookup_customer", ADA)
    assert mtls.alive()


def test_unbinding_refuses_the_certificate_within_the_cache_bound(mtls, pki, stack) -> None:
    agent = stack.create_agent(unique("unbind"), ["customers:read"])
    cert = str(pki.client("paired")[0])
    stack.cli("agents", "bind-cert", agent, "--pem", cert)
    with client(pki, "paired") as http:
        assert rpc_result(tool_call(http, mtls.gateway_url, None, "lookup_customer", ADA))["isError"] is False
        assert stack.cli("agents", "unbind-cert", "--pem", cert).json()["unbound"].startswith("sha256:")
        time.sleep(KEY_CACHE_TTL_SECS + 0.5)
        resp = tool_call(http, mtls.gateway_url, None, "lookup_customer", ADA)
    assert rpc_error(resp, 401, -31001)["data"]["reason"] == "unknown_certificate"
    # Bind it back for the tests that follow.
    stack.cli("agents", "bind-cert", agent, "--pem", cert)
    bad = stack.cli("agents", "bind-cert", "no-such-agent", "--pem", cert, check=False)
    assert bad.returncode != 0


def test_admin_cli_refuses_bad_certificate_input(stack, tmp_path) -> None:
    agent = stack.create_agent(unique("badcert"), [])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    for args in (["--pem", str(junk)], ["--pem", str(tmp_path / "missing.pem")], ["--subject", " "], []):
        r = stack.cli("agents", "bind-cert", agent, *args, check=False)
        assert r.returncode != 0, args
        assert "not a certificate" not in r.stderr


def test_require_token_wants_both_factors_of_one_agent(stack, processes, pki, bound_agent) -> None:
    dev = processes.extra_instance(stack, **tls_overrides(pki), TOLLGATE_AUTH_METHODS="api_key,mtls",
                                   TOLLGATE_MTLS_REQUIRE_TOKEN="true")
    own_key = stack.create_key(bound_agent)["token"]
    with client(pki, "bound") as http:
        r = tool_call(http, dev.gateway_url, None, "lookup_customer", ADA)
        assert rpc_error(r, 401, -31001)["data"]["reason"] == "missing_credentials"
        assert rpc_result(tool_call(http, dev.gateway_url, own_key, "lookup_customer", ADA))["isError"] is False
        r = tool_call(http, dev.gateway_url, stack.demo_token, "lookup_customer", ADA)
        assert rpc_error(r, 401, -31001)["data"]["reason"] == "certificate_token_mismatch"
    with client(pki, None) as http:
        r = tool_call(http, dev.gateway_url, own_key, "lookup_customer", ADA)
        assert rpc_error(r, 401, -31001)["data"]["reason"] == "missing_credentials", "no certificate"
