"""The master's console in a real browser: Debian's Chromium, headless, driven by Playwright.

The real broker runs in --dev mode on a loopback port; the real `agentkeys` CLI plays the
agent. The page gets a test wallet: an EIP-1193 provider (`window.ethereum`) injected before the
console loads, whose `personal_sign` is answered by this test with a key it holds (eth-account),
as MetaMask would after the user clicked "Sign". Every test fails on any error in the browser's
console (script errors, CSP violations, failed loads).

Environment:
    AGENTKEYS_BROKER_BIN, AGENTKEYS_BIN  the binaries under test (tests/console/run.sh sets them)
    CHROMIUM [/usr/bin/chromium]         the browser Playwright drives (none is downloaded)
    CONSOLE_PORT [a free port]           the broker's port
    CONSOLE_SCREENSHOTS [unset]          a directory: save a screenshot of each main page there
"""

import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from playwright.sync_api import expect, sync_playwright

HEALTH_TIMEOUT_S = 30
BROKER_LOG = {}
CLI_TIMEOUT_S = 60

PROVIDER = """
(() => {
  const address = %s;
  window.ethereum = {
    isAgentKeysTestWallet: true,
    request: async ({ method, params }) => {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [address];
      if (method === "eth_chainId") return "0x1";
      if (method === "personal_sign") return await window.__testWalletSign(params[0], params[1]);
      throw Object.assign(new Error("unsupported method " + method), { code: 4200 });
    },
  };
})();
"""


def _binary(var):
    path = os.environ.get(var)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"{var} must name the built binary (tests/console/run.sh sets it)", pytrace=False)
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, headers=None, body=None):
    """(status, headers, parsed JSON or text) of one request outside the browser."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw, status, hdrs = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, e.headers
    try:
        return status, hdrs, json.loads(raw) if raw else None
    except ValueError:
        return status, hdrs, raw.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def broker():
    bin_path = _binary("AGENTKEYS_BROKER_BIN")
    with tempfile.TemporaryDirectory(prefix="agentkeys-console-") as tmp:
        port = int(os.environ.get("CONSOLE_PORT") or _free_port())
        url = f"http://127.0.0.1:{port}"
        log_path = os.path.join(tmp, "broker.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [bin_path, "serve", "--dev", "--email-dev-log-links", "--listen", f"127.0.0.1:{port}",
                 "--data-dir", os.path.join(tmp, "data")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        BROKER_LOG["path"] = log_path
        try:
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            while not _up(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("broker did not start:\n" + open(log_path, errors="replace").read(),
                                pytrace=False)
                time.sleep(0.1)
            yield url
        finally:
            proc.kill()
            proc.wait(timeout=10)


def _up(url):
    try:
        urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


class Agent:
    """The real CLI in its own config dir: `agent init`, then paired through the console."""

    def __init__(self, broker, home):
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("AGENTKEYS_") and k != "XDG_CONFIG_HOME"}
        self.env.update(AGENTKEYS_BROKER_URL=broker, AGENTKEYS_CONFIG_DIR=os.path.join(home, "config"),
                        HOME=home)
        self.bin = _binary("AGENTKEYS_BIN")

    def run(self, *args, ok=True):
        p = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True,
                           timeout=CLI_TIMEOUT_S)
        if ok:
            assert p.returncode == 0, f"agentkeys {' '.join(args)} exited {p.returncode}: {p.stderr}"
        return p

    def spawn(self, *args):
        return subprocess.Popen([self.bin, *args], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                              headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def master_key():
    return Account.create()


class Console:
    """One browser context with the test wallet; collects every console error."""

    def __init__(self, browser, broker, key):
        self.broker, self.key = broker, key
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.errors, self.signed = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.expose_function("__testWalletSign", self._sign)
        self.page.add_init_script(PROVIDER % json.dumps(key.address.lower()))

    def _sign(self, data_hex, address):
        assert address.lower() == self.key.address.lower(), address
        message = bytes.fromhex(data_hex[2:]).decode("utf-8")
        self.signed.append(message)
        sig = Account.sign_message(encode_defunct(text=message), self.key.key).signature.hex()
        return sig if sig.startswith("0x") else "0x" + sig

    def open(self, fragment=""):
        self.page.goto(f"{self.broker}/console{fragment}")

    def sign_in(self):
        self.open()
        self.page.click("#wallet-signin")
        expect(self.page.locator("#who")).to_have_text(self.key.address.lower())
        self.wait_page("requests")

    def go(self, name):
        self.page.click(f"nav a[data-page={name}]")
        self.wait_page(name)

    def wait_page(self, name):
        expect(self.page.locator(f"#page[data-ready={name}]")).to_be_visible()

    def flash(self):
        loc = self.page.locator("#flash")
        expect(loc).to_be_visible()
        return loc.inner_text()

    def shot(self, name):
        out = os.environ.get("CONSOLE_SCREENSHOTS")
        if out:
            os.makedirs(out, exist_ok=True)
            self.page.screenshot(path=os.path.join(out, f"{name}.png"))

    def close(self):
        self.context.close()
        assert self.errors == [], f"errors in the browser console: {self.errors}"


@pytest.fixture
def console(browser, broker, master_key):
    c = Console(browser, broker, master_key)
    yield c
    c.close()


def pair_in_console(c, home, broker, label):
    """Runs `agentkeys agent pair` and approves its code in the signed-in console `c`."""
    a = Agent(broker, home)
    device = a.run("agent", "init").stdout
    pairing = a.spawn("agent", "pair", "--json", "--timeout", "60")
    code = None
    for line in pairing.stderr:
        if line.startswith("Pairing code: "):
            code = line.removeprefix("Pairing code: ").strip()
            break
    assert code, "agent pair printed no code"
    c.page.fill("#pair-code", code)
    c.page.click("#pairing-form button[type=submit]")
    shown = c.page.locator("#pair-device").inner_text()
    c.shot("requests-pairing")
    c.page.fill("#pair-label", label)
    c.page.click("#pair-approve")
    assert f"Paired agent {label}" in c.flash()
    out, err = pairing.communicate(timeout=CLI_TIMEOUT_S)
    assert pairing.returncode == 0, err
    paired = json.loads(out)
    assert paired["device_address"].lower() == shown.lower(), (paired, shown)
    a.device_shown, a.device_printed, a.omni = shown, device, paired["agent_omni"]
    return a


@pytest.fixture(scope="module")
def agent(browser, broker, master_key):
    """An agent paired with the real CLI, its code approved in the console (the pairing test)."""
    with tempfile.TemporaryDirectory(prefix="agentkeys-agent-") as home:
        c = Console(browser, broker, master_key)
        c.sign_in()
        a = pair_in_console(c, home, broker, "bot1")
        c.close()
        yield a


def test_wallet_sign_in_sets_an_httponly_cookie_and_headers_forbid_framing_and_inline_script(
        console, broker):
    status, headers, _ = http("GET", f"{broker}/console")
    assert status == 200
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert headers["x-frame-options"] == "DENY"

    console.open()
    expect(console.page.locator("#signin")).to_be_visible()
    console.shot("sign-in")
    console.sign_in()
    assert console.signed and console.signed[0].startswith(broker.split("://")[1]), console.signed
    assert "Sign in to AgentKeys." in console.signed[0]
    cookies = console.context.cookies()
    session = [c for c in cookies if c["name"] == "agentkeys_session"]
    assert session and session[0]["httpOnly"] and session[0]["sameSite"] == "Strict", cookies
    token = session[0]["value"]
    assert token not in console.page.url
    assert console.page.evaluate("document.cookie") == "", "the page's script cannot read the session"

    # The cookie alone changes nothing: a cross-site form or fetch has no CSRF token.
    cookie = {"cookie": f"agentkeys_session={token}"}
    status, _, body = http("POST", f"{broker}/v1/session/logout", headers=cookie)
    assert (status, body["error"]) == (403, "csrf_failed"), body
    assert http("GET", f"{broker}/v1/agents", headers=cookie)[0] == 200

    # Logging out revokes the session at the broker, not only in this browser.
    console.page.click("#logout")
    expect(console.page.locator("#signin")).to_be_visible()
    assert http("GET", f"{broker}/v1/agents", headers=cookie)[0] == 401
    assert not [c for c in console.context.cookies() if c["name"] == "agentkeys_session"]


def test_a_pairing_started_by_the_cli_is_approved_in_the_console(agent):
    # The console showed the device address the CLI's `agent init` printed.
    assert agent.device_shown.lower() in agent.device_printed.lower(), (agent.device_shown, agent.device_printed)
    whoami = json.loads(agent.run("whoami", "--json").stdout)
    assert whoami["kind"] == "agent"


def test_suspending_an_agent_refuses_its_next_mint(console, agent):
    console.sign_in()
    console.go("agents")
    row = console.page.locator("tr[data-agent=bot1]")
    expect(row.locator("td.status-active")).to_be_visible()
    console.shot("agents")
    row.locator("button[data-action=suspend]").click()
    assert "Suspended bot1" in console.flash()
    expect(console.page.locator("tr[data-agent=bot1] td.status-suspended")).to_be_visible()
    refused = agent.run("token", ok=False)
    assert refused.returncode != 0 and "agent_suspended" in refused.stderr, refused.stderr
    console.page.locator("tr[data-agent=bot1] button[data-action=resume]").click()
    expect(console.page.locator("tr[data-agent=bot1] td.status-active")).to_be_visible()
    assert agent.run("token").stdout.count(".") == 2


def test_a_grant_is_created_with_its_exposure_and_revoked(console, agent):
    console.sign_in()
    console.go("grants")
    expect(console.page.locator("#grant-exposure")).to_contain_text("Worst case after a revocation: 3900 s")
    console.page.select_option("#grant-agent", label="bot1")
    console.page.fill("#grant-scope", "inbox/")
    console.page.fill("#grant-hours", "2")
    console.page.fill("#grant-uses", "3")
    console.page.click("#grant-form button[type=submit]")
    text = console.flash()
    assert "Worst case after a revocation" in text and "inbox/" in text, text
    grant = re.search(r"as ([0-9a-f]{32})", text).group(1)
    row = console.page.locator(f"tr[data-grant='{grant}']")
    expect(row.locator("td.status-active")).to_be_visible()
    console.shot("grants")
    claims = agent.run("token", "--grant", grant, "--json")
    assert claims.returncode == 0
    row.locator("button[data-action=revoke]").click()
    expect(console.page.locator(f"tr[data-grant='{grant}'] td.status-revoked")).to_be_visible()
    refused = agent.run("token", "--grant", grant, ok=False)
    assert refused.returncode != 0 and "grant_revoked" in refused.stderr, refused.stderr


def test_an_access_request_is_approved_with_a_wallet_signature(console, agent):
    asked = json.loads(agent.run("grants", "request", "--scope", "reports/", "--uses", "2", "--ttl", "1h",
                                 "--reason", "summarise the Q3 reports", "--no-wait", "--json").stdout)
    rid = asked["request_id"]
    console.sign_in()
    card = console.page.locator(f".access-request[data-request='{rid}']")
    expect(card).to_contain_text("summarise the Q3 reports")
    expect(card).to_contain_text("Worst case")
    console.shot("requests")
    card.locator("button.approve-request").click()
    assert "Approved: bot1 has grant" in console.flash()
    approval = [m for m in console.signed if "Approve access request" in m]
    assert approval and f"Approve access request {rid}: agent bot1 ({agent.omni})" in approval[0], console.signed
    assert "for 2 mints until" in approval[0]
    done = json.loads(agent.run("requests", "show", rid, "--wait", "--json").stdout)
    assert done["status"] == "approved"
    grant = done["grant"]["grant_id"]
    assert agent.run("token", "--grant", grant).returncode == 0
    expect(console.page.locator("#no-requests")).to_be_visible()


def test_the_audit_trail_is_filtered_paged_and_its_chain_verified(console, agent):
    for _ in range(26):
        agent.run("token")
    console.sign_in()
    console.go("audit")
    expect(console.page.locator("#chain-status.chain-ok")).to_contain_text("Chain intact")
    kinds = console.page.locator("#page tbody tr").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    for k in ("sign_in.wallet", "agent.paired", "agent.suspended", "grant.created"):
        assert k in kinds, kinds
    console.shot("audit")
    console.page.fill("#audit-kind", "mint")
    console.page.click("#audit-form button[type=submit]")
    expect(console.page.locator("#page tbody tr").first).to_have_attribute("data-kind", "mint")
    first = console.page.locator("#page tbody tr").evaluate_all("rows => rows.map(r => r.dataset.kind)")
    assert set(first) == {"mint"} and len(first) == 25, first
    first_seq = console.page.locator("#page tbody tr td").first.inner_text()
    console.page.click("#audit-next")
    expect(console.page.locator("#audit-prev")).to_be_enabled()
    second_seq = console.page.locator("#page tbody tr td").first.inner_text()
    assert int(second_seq) > int(first_seq)
    console.page.click("#audit-prev")
    expect(console.page.locator("#page tbody tr td").first).to_have_text(first_seq)


def test_sessions_and_identities_pages(console, browser, broker, master_key):
    other = Console(browser, broker, master_key)
    other.sign_in()
    console.sign_in()
    console.go("sessions")
    expect(console.page.locator("#page tbody tr").nth(1)).to_be_visible()
    console.shot("sessions")
    # Revoke every session but this browser's, one click each.
    others = console.page.locator("tr:has(button[data-action=revoke-session])").evaluate_all(
        "rows => rows.map(r => r.dataset.session)")
    assert others
    for sid in others:
        console.page.locator(f"tr[data-session='{sid}'] button[data-action=revoke-session]").click()
        expect(console.page.locator(f"tr[data-session='{sid}']")).to_have_count(0)
    expect(console.page.locator("#page tbody tr")).to_have_count(1)
    # The other browser's session is gone: its next page load shows the sign-in page.
    other.page.reload()
    expect(other.page.locator("#signin")).to_be_visible()
    other.close()
    console.go("identities")
    expect(console.page.locator("#page")).to_contain_text("No linked identities")


def test_an_email_link_signs_in_this_browser_and_that_master_approves_with_its_session(
        browser, broker):
    console = Console(browser, broker, Account.create())
    console.open()
    console.page.fill("#email", "carol@example.com")
    console.page.click("#email-form button[type=submit]")
    assert "Open it in this browser" in console.flash()
    # --email-dev-log-links: the mail's link is in the broker's log instead of a mailbox.
    link = None
    deadline = time.monotonic() + 10
    while not link and time.monotonic() < deadline:
        found = re.findall(r"(http://[^\s\"]+/auth/email/landing#token=[A-Za-z0-9_-]+)",
                           open(BROKER_LOG["path"], errors="replace").read())
        link = found[-1] if found else None
        time.sleep(0.1)
    assert link, "no sign-in link in the broker's log"
    console.page.goto(link)
    assert "#token" not in console.page.url, "the page takes the token out of the address bar"
    console.page.click("#confirm")
    expect(console.page.locator("#status")).to_contain_text("signed in as carol@example.com")
    expect(console.page.locator("#status")).to_contain_text(f"{broker}/console")
    console.open()
    console.wait_page("requests")
    with tempfile.TemporaryDirectory(prefix="agentkeys-agent-") as home:
        bot = pair_in_console(console, home, broker, "carols-bot")
        asked = json.loads(bot.run("grants", "request", "--scope", "inbox/", "--ttl", "30m",
                                   "--reason", "file receipts", "--no-wait", "--json").stdout)
        console.page.reload()
        console.wait_page("requests")
        card = console.page.locator(f".access-request[data-request='{asked['request_id']}']")
        expect(card.locator("button.approve-request")).to_have_text("Approve")
        card.locator("button.approve-request").click()
        assert "Approved: carols-bot has grant" in console.flash()
        assert console.signed == [], "no wallet was asked to sign anything"
        done = json.loads(bot.run("requests", "show", asked["request_id"], "--json").stdout)
        assert done["status"] == "approved" and done["grant"]["max_uses"] is None
    console.close()
