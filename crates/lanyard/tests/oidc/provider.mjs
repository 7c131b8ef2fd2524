// A real, independent OpenID Connect provider for Lanyard's end-to-end tests: the certified
// `oidc-provider` package, configured here and listening on loopback (plain HTTP, port 0).
//
// Environment: REDIRECT_URI (Lanyard's callback, required).
// Prints one line `issuer http://127.0.0.1:<port>` on standard output when ready.
//
// Clients: `lanyard` (confidential, secret `lanyard-test-secret`, code lifetime 60 s) and
// `lanyard-short` (same secret, code lifetime 1 s, to test expired codes). PKCE S256 is
// required for both.
//
// Accounts (login = password): ann@example.com (verified), bob@example.com (verified),
// carol@example.com (email_verified false), dan@example.com (verified; not a Lanyard user).
//
// The interaction is one plain HTML form (no script): login and password; on success the
// login and the consent for the requested scopes are granted at once.
import http from 'node:http';
import Provider from 'oidc-provider';

const redirectUri = process.env.REDIRECT_URI;
if (!redirectUri) {
  console.error('REDIRECT_URI is required');
  process.exit(2);
}

const accounts = {
  'ann@example.com': { email_verified: true, name: 'Ann Example' },
  'bob@example.com': { email_verified: true, name: 'Bob Example' },
  'carol@example.com': { email_verified: false, name: 'Carol Example' },
  'dan@example.com': { email_verified: true, name: 'Dan Example' },
};

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const client = (id) => ({
  client_id: id,
  client_secret: 'lanyard-test-secret',
  redirect_uris: [redirectUri],
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
});

const provider = new Provider(issuer, {
  clients: [client('lanyard'), client('lanyard-short')],
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: { devInteractions: { enabled: false } },
  cookies: { keys: ['lanyard-test-provider-cookie-key'] },
  ttl: {
    AuthorizationCode: (ctx, code, c) => (c.clientId === 'lanyard-short' ? 1 : 60),
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, sub) => {
    const a = accounts[sub];
    if (!a) return undefined;
    return {
      accountId: sub,
      claims: async () => ({ sub, email: sub, email_verified: a.email_verified, name: a.name }),
    };
  },
});
provider.proxy = false;

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, status, body) {
  res.statusCode = status;
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.setHeader('cache-control', 'no-store');
  res.end(`<!doctype html><html><head><title>Test provider</title></head><body>${body}</body></html>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 16384) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

async function interaction(req, res) {
  const uid = req.url.split('/')[2]?.split('?')[0];
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return page(res, 400, '<p id="message">wrong interaction</p>');
  if (req.method === 'GET') {
    return page(res, 200, `<h1>Sign in to the test provider</h1>
      <form method="post" action="/interaction/${esc(uid)}">
      <label>Email <input type="email" name="email" required></label>
      <label>Password <input type="password" name="password" required></label>
      <button type="submit">Sign in</button></form>`);
  }
  const form = await readForm(req);
  const login = (form.get('email') || '').trim().toLowerCase();
  if (!accounts[login] || form.get('password') !== login) {
    return page(res, 401, '<p id="message">Wrong email or password.</p>');
  }
  const grant = new provider.Grant({ accountId: login, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  return provider.interactionFinished(
    req,
    res,
    { login: { accountId: login }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((e) => page(res, 400, `<p id="message">${esc(e.message)}</p>`));
  } else {
    callback(req, res);
  }
});

console.log(`issuer ${issuer}`);
