"""An independent OIDC relying party checks the tokens AgentKeys mints (SPEC §5).

The real broker runs in --dev mode on a free loopback port with a temporary data dir; the real
`agentkeys` CLI generates a key, signs in and mints. Then this test, knowing nothing but the
issuer URL, fetches discovery and the JWKS over HTTP and verifies the tokens with PyJWT, the way
AWS STS or any other verifier would.

Binaries come from the environment (no guessing):
    AGENTKEYS_BROKER_BIN  path to agentkeys-broker
    AGENTKEYS_BIN         path to agentkeys
`tests/relying_party/run.sh` builds both, creates a virtualenv and runs this file.
"""

import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time

import jwt
import pytest
import requests
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

AUDIENCE = "sts.amazonaws.com"
ROLE_ARN = "arn:aws:iam::123456789012:role/agentkeys-data"
TAGS_CLAIM = "https://aws.amazon.com/tags"
ROLES_CLAIM = "https://aws.amazon.com/roles"
REQUIRED = ["exp", "iat", "nbf", "iss", "sub", "aud", "jti"]
HEALTH_TIMEOUT_S = 30


def _binary(var):
    path = os.environ.get(var)
    if not path:
        pytest.fail(
            f"{var} is not set: point it at the built binary "
            "(tests/relying_party/run.sh does this after `cargo build`)",
            pytrace=False,
        )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"{var}={path} is not an executable file", pytrace=False)
    return path


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url_encode(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


# The running broker's data dir, for the operator commands run beside it.
_DATA_DIR = []


@pytest.fixture(scope="module")
def broker():
    """The broker process; yields its issuer URL and stops it afterwards."""
    bin_path = _binary("AGENTKEYS_BROKER_BIN")
    with tempfile.TemporaryDirectory(prefix="agentkeys-rp-") as tmp:
        _DATA_DIR[:] = [os.path.join(tmp, "data")]
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = os.path.join(tmp, "broker.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [bin_path, "serve", "--dev", "--listen", f"127.0.0.1:{port}",
                 "--data-dir", os.path.join(tmp, "data")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        try:
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"broker exited with {proc.returncode} during start-up:\n"
                                + open(log_path, encoding="utf-8", errors="replace").read(),
                                pytrace=False)
                try:
                    if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"broker did not answer 200 on {url}/healthz within "
                                f"{HEALTH_TIMEOUT_S}s:\n"
                                + open(log_path, encoding="utf-8", errors="replace").read(),
                                pytrace=False)
                time.sleep(0.1)
            yield url
        finally:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def client(broker):
    """Signs in with a fresh key through the real CLI; yields a helper to run it."""
    bin_path = _binary("AGENTKEYS_BIN")
    with tempfile.TemporaryDirectory(prefix="agentkeys-cli-") as home:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AGENTKEYS_") and k != "XDG_CONFIG_HOME"}
        env.update(AGENTKEYS_BROKER_URL=broker,
                   AGENTKEYS_CONFIG_DIR=os.path.join(home, "config"), HOME=home)

        def run(*args):
            p = subprocess.run([bin_path, *args], env=env, capture_output=True, text=True,
                               timeout=60)
            assert p.returncode == 0, (
                f"agentkeys {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
            return p.stdout

        key = os.path.join(home, "wallet.key")
        wallet = run("key", "generate", "--out", key).strip()
        assert re.fullmatch(r"0x[0-9a-f]{40}", wallet), wallet
        run("login", "wallet", "--key-file", key)
        me = json.loads(run("whoami", "--json"))
        yield {"run": run, "wallet": wallet, "omni": me["omni_account"]}


@pytest.fixture(scope="module")
def discovery(broker):
    r = requests.get(f"{broker}/.well-known/openid-configuration", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def jwks_response(discovery):
    r = requests.get(discovery["jwks_uri"], timeout=10)
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def jwks(jwks_response):
    return jwks_response.json()


def mint(client, *args):
    out = client["run"]("token", *args)
    assert out.count("\n") == 1 and out.endswith("\n"), f"only the JWT on stdout: {out!r}"
    token = out.strip()
    assert token.count(".") == 2, token
    return token


def verify(token, discovery):
    """Verification as a relying party: keys from jwks_uri only, strict options."""
    signing_key = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False).get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        signing_key.key,
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=discovery["issuer"],
        options={"require": REQUIRED},
        leeway=0,
    )


def test_discovery(broker, discovery):
    assert discovery["issuer"] == broker  # byte-exact: no trailing slash
    assert discovery["jwks_uri"].startswith(broker + "/")
    assert discovery["id_token_signing_alg_values_supported"] == ["ES256"]


def test_jwks_keys(jwks, jwks_response):
    cache_control = jwks_response.headers.get("Cache-Control", "")
    m = re.search(r"(?:^|[,\s])max-age=(\d+)", cache_control)
    assert m, f"Cache-Control with max-age expected, got {cache_control!r}"

    keys = jwks["keys"]
    assert 1 <= len(keys) <= 4
    for k in keys:
        assert k["kty"] == "EC" and k["crv"] == "P-256", k
        assert k["alg"] == "ES256" and k["use"] == "sig", k
        assert "d" not in k, "private key material published"
        x, y = b64url_decode(k["x"]), b64url_decode(k["y"])
        assert len(x) == 32 and len(y) == 32, k

        # kid is the RFC 7638 thumbprint, computed here independently.
        canonical = json.dumps({"crv": k["crv"], "kty": k["kty"], "x": k["x"], "y": k["y"]},
                               separators=(",", ":"))
        assert k["kid"] == b64url_encode(hashlib.sha256(canonical.encode()).digest())

        # x5c: one standard-base64 DER certificate over this very key, self-signed.
        assert isinstance(k["x5c"], list) and len(k["x5c"]) == 1, k
        cert = x509.load_der_x509_certificate(base64.b64decode(k["x5c"][0], validate=True))
        pub = cert.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert isinstance(pub.curve, ec.SECP256R1)
        numbers = pub.public_numbers()
        assert numbers.x == int.from_bytes(x, "big")
        assert numbers.y == int.from_bytes(y, "big")
        pub.verify(cert.signature, cert.tbs_certificate_bytes,
                   ec.ECDSA(cert.signature_hash_algorithm))


def test_minted_token_verifies(client, discovery, jwks):
    token = mint(client)
    claims = verify(token, discovery)
    wallet, omni = client["wallet"], client["omni"]

    header = jwt.get_unverified_header(token)
    assert header["kid"] == jwks["keys"][0]["kid"], "signed by the active (first) key"
    assert header["alg"] == "ES256"
    assert header["typ"] == "JWT"

    assert claims["iss"] == discovery["issuer"]
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == f"agentkeys:user:{wallet}"
    for c in ("iat", "nbf", "exp"):
        assert isinstance(claims[c], int), (c, claims[c])
    assert claims["nbf"] == claims["iat"] - 60
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 120
    assert isinstance(claims["jti"], str) and claims["jti"]

    # omni = sha256("agentkeys" || "evm" || wallet), computed independently.
    assert omni == hashlib.sha256(f"agentkeysevm{wallet}".encode()).hexdigest()
    assert claims["agentkeys_user_wallet"] == wallet
    assert claims["agentkeys_actor_omni"] == omni

    unsupported = set(claims) - set(discovery["claims_supported"])
    assert not unsupported, f"claims not in claims_supported: {unsupported}"

    tags = claims[TAGS_CLAIM]
    assert tags["principal_tags"] == {
        "agentkeys_user_wallet": [wallet],
        "agentkeys_actor_omni": [omni],
    }
    assert sorted(tags["transitive_tag_keys"]) == ["agentkeys_actor_omni", "agentkeys_user_wallet"]
    assert ROLES_CLAIM not in claims

    # Each mint is a new token.
    assert verify(mint(client), discovery)["jti"] != claims["jti"]


def test_role_arn_pins_the_role(client, discovery):
    claims = verify(mint(client, "--role-arn", ROLE_ARN), discovery)
    assert claims[ROLES_CLAIM] == ROLE_ARN
    assert set(claims) <= set(discovery["claims_supported"])


def _keys(jwks):
    return {k.key_id: k.key for k in jwt.PyJWKSet.from_dict(jwks).keys}


def test_modified_payload_fails(client, discovery, jwks):
    token = mint(client)
    header_b64, payload_b64, sig_b64 = token.split(".")
    payload = json.loads(b64url_decode(payload_b64))
    payload["agentkeys_user_wallet"] = "0x" + "de" * 20
    payload[TAGS_CLAIM]["principal_tags"]["agentkeys_user_wallet"] = ["0x" + "de" * 20]
    forged_payload = b64url_encode(json.dumps(payload, separators=(",", ":")).encode())
    forged = ".".join([header_b64, forged_payload, sig_b64])

    key = _keys(jwks)[jwt.get_unverified_header(token)["kid"]]
    # The original verifies with the same key and options, so the failure below is the edit.
    jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE, issuer=discovery["issuer"],
               options={"require": REQUIRED})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key, algorithms=["ES256"], audience=AUDIENCE,
                   issuer=discovery["issuer"], options={"require": REQUIRED})


def test_foreign_key_and_wrong_audience_fail(client, discovery, jwks):
    token = mint(client)
    kid = jwt.get_unverified_header(token)["kid"]
    key = _keys(jwks)[kid]
    claims = jwt.decode(token, options={"verify_signature": False})

    # Same claims and kid, signed by a key the issuer never published.
    impostor = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                          headers={"kid": kid, "typ": "JWT"})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(impostor, key, algorithms=["ES256"], audience=AUDIENCE,
                   issuer=discovery["issuer"])

    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=["ES256"], audience="some-other-audience",
                   issuer=discovery["issuer"])
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE,
                   issuer=discovery["issuer"] + "/")


def test_audit_hashes_recompute_with_an_off_the_shelf_jcs_library(broker, client):
    """The exported chain, recomputed with PyPI's rfc8785 and hashlib: no AgentKeys code."""
    mint(client)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    out = subprocess.run([_binary("AGENTKEYS_BROKER_BIN"), "audit", "export",
                          "--data-dir", _DATA_DIR[0]],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(events) >= 3, events
    prev = "0" * 64
    for e in events:
        assert e["hash_format"] == 2, e
        hashed = {k: e[k] for k in ("seq", "time", "kind", "actor", "master", "outcome", "details")}
        digest = hashlib.sha256(prev.encode("ascii") + rfc8785.dumps(hashed)).hexdigest()
        assert (e["prev_hash"], e["hash"]) == (prev, digest), e["seq"]
        prev = digest
