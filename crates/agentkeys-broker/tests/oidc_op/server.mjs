// A real OpenID Provider for the broker's tests: panva's `oidc-provider` (a certified,
// standards-complete OP) with static clients and a non-interactive login step.
//
// It starts two issuers in one process, each on its own loopback port chosen by the OS:
//   - "rich":   puts `email` / `email_verified` in the ID token, as Google does
//               (conformIdTokenClaims: false);
//   - "strict": OIDC Core 5.4 to the letter: scope-requested claims only at the UserInfo
//               endpoint when an access token is issued (oidc-provider's default).
// When both listen it prints ONE line to stdout and nothing else:
//   {"ready":true,"issuers":{"rich":"http://127.0.0.1:PORT","strict":"http://127.0.0.1:PORT"}}
// It exits when its stdin closes, so a test harness that dies takes it along.
//
// Clients (the same at both issuers), all confidential (client_secret_basic or _post),
// authorization code only, PKCE S256 required:
//   agentkeys-test  / agentkeys-test-secret
//   agentkeys-other / agentkeys-other-secret   (a second RP: "a token for another audience")
// Redirect URI: http://127.0.0.1/auth/oidc/callback, registered as a native client so that any
// loopback port matches (RFC 8252 7.3): http://127.0.0.1:<any port>/auth/oidc/callback.
// More redirect URIs: OIDC_OP_REDIRECT_URIS="uri1 uri2" (space separated).
//
// Login without a browser: GET the authorization URL (303 to /interaction/<uid>, with cookies),
// then POST /interaction/<uid> with `login=<account>` (form-encoded, the same cookies): login and
// consent to the requested scopes happen in one step, and the 303 goes back to /auth/<uid>,
// whose 303 goes to the redirect URI with code, state and iss. `action=deny` ends the
// interaction with error=access_denied instead. GET /interaction/<uid> shows a small form.
//
// Accounts: any login name is an account whose `sub` is the name verbatim, with
//   email `<name>@example.test`, email_verified true; except names starting with
//   "unverified" (email_verified false) and "noemail" (no email claims at all).

import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const CLIENTS = [
  ['agentkeys-test', 'agentkeys-test-secret'],
  ['agentkeys-other', 'agentkeys-other-secret'],
];
const REDIRECT_URIS = [
  'http://127.0.0.1/auth/oidc/callback',
  ...(process.env.OIDC_OP_REDIRECT_URIS || '').split(/\s+/).filter(Boolean),
];

function account(id) {
  const claims = { sub: id };
  if (!id.startsWith('noemail')) {
    claims.email = `${id}@example.test`;
    claims.email_verified = !id.startsWith('unverified');
  }
  return claims;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16384) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function startIssuer(name, conformIdTokenClaims) {
  const server = createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `${name}-${randomBytes(4).toString('hex')}`, use: 'sig', alg: 'RS256' };

  const provider = new Provider(issuer, {
    clients: CLIENTS.map(([client_id, client_secret]) => ({
      client_id,
      client_secret,
      application_type: 'native',
      redirect_uris: REDIRECT_URIS,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    clientBasedCORS: () => false,
    jwks: { keys: [jwk] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    scopes: ['openid', 'email'],
    conformIdTokenClaims,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => account(id) }),
    ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 600, Grant: 600 },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  });
  provider.proxy = false;

  const callback = provider.callback();
  server.on('request', async (req, res) => {
    const m = /^\/interaction\/([\w-]+)$/.exec(new URL(req.url, issuer).pathname);
    if (!m) return callback(req, res);
    try {
      if (req.method === 'GET') {
        const details = await provider.interactionDetails(req, res);
        res.setHeader('Content-Type', 'text/html; charset=utf-8');
        res.end(`<!doctype html><title>Test OP sign-in</title>
<form method="post" action="/interaction/${escapeHtml(details.uid)}">
<p>Client ${escapeHtml(details.params.client_id)} asks for: ${escapeHtml(details.params.scope)}</p>
<label>Account <input name="login" autofocus></label>
<button name="action" value="approve">Sign in</button>
<button name="action" value="deny">Deny</button></form>`);
        return;
      }
      if (req.method !== 'POST') {
        res.statusCode = 405;
        res.end();
        return;
      }
      const form = await readForm(req);
      const details = await provider.interactionDetails(req, res);
      if (form.get('action') === 'deny') {
        await provider.interactionFinished(req, res, {
          error: 'access_denied',
          error_description: 'the end-user denied the request',
        }, { mergeWithLastSubmission: false });
        return;
      }
      const accountId = form.get('login') || details.session?.accountId;
      if (!accountId) {
        res.statusCode = 400;
        res.end('login is required');
        return;
      }
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId, clientId: details.params.client_id });
      grant.addOIDCScope(String(details.params.scope || 'openid'));
      const missingClaims = details.prompt.details.missingOIDCClaims;
      if (Array.isArray(missingClaims)) grant.addOIDCClaims(missingClaims);
      const grantId = await grant.save();
      await provider.interactionFinished(req, res, {
        login: { accountId },
        consent: { grantId },
      }, { mergeWithLastSubmission: false });
    } catch (err) {
      res.statusCode = 400;
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ error: err.name || 'error', error_description: err.message }));
    }
  });
  return issuer;
}

const rich = await startIssuer('rich', false);
const strict = await startIssuer('strict', true);
process.stdout.write(`${JSON.stringify({ ready: true, issuers: { rich, strict } })}\n`);

// Exit with the parent: the harness holds our stdin open for as long as it lives.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
