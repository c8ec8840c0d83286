// A single-page app on another origin signs a person in through Gatehouse with the
// code flow and PKCE, all in the browser: it reads discovery, sends the person to
// /oauth2/authorize, and on its callback exchanges the code with `fetch` to
// /oauth2/token, calls /oauth2/userinfo with the access token, revokes it and sees
// userinfo refuse it. Gatehouse answers those calls with CORS for the origins the
// client was registered with (`--web-origin`), and for no other: the same app served
// from a second origin, not registered, gets its code but the browser refuses its
// page the token answer (`fetch` fails).
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import { Journey, launchBrowser } from './lib/browser.mjs';
import { freePort, startServer } from './lib/server.mjs';
import { answerSecondFactor, createVerifiedUser, leadsToPage, path } from './lib/steps.mjs';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

const PAGE = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Notes (a single-page app)</title><link rel="icon" href="data:,"></head>
<body>
<main>
<h1>Notes</h1>
<button type="button" id="sign-in">Sign in with Gatehouse</button>
<p><output id="result"></output></p>
</main>
<script type="module" src="/app.js"></script>
</body>
</html>
`;

// The app itself: nothing but the browser's own fetch and Web Crypto.
const APP = `
const config = await (await fetch('/config.json')).json();
const out = document.getElementById('result');
const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
  .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
const callback = location.origin + '/callback';
// Discovery answers any origin.
const meta = await (await fetch(config.issuer + '/.well-known/openid-configuration')).json();

document.getElementById('sign-in').addEventListener('click', async () => {
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
  const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem('pkce', JSON.stringify({ verifier, state }));
  const u = new URL(meta.authorization_endpoint);
  u.search = new URLSearchParams({
    response_type: 'code', client_id: config.clientId, redirect_uri: callback,
    scope: 'openid email', state, code_challenge: challenge, code_challenge_method: 'S256',
  });
  location.assign(u);
});

if (location.pathname === '/callback') {
  const params = new URLSearchParams(location.search);
  const { verifier, state } = JSON.parse(sessionStorage.getItem('pkce') || '{}');
  const steps = [];
  try {
    if (!params.get('code') || params.get('state') !== state) throw new Error('no code for this request');
    const res = await fetch(meta.token_endpoint, {
      method: 'POST',
      body: new URLSearchParams({
        grant_type: 'authorization_code', code: params.get('code'), redirect_uri: callback,
        client_id: config.clientId, code_verifier: verifier,
      }),
    });
    const tokens = await res.json();
    if (!res.ok) throw new Error('token endpoint answered ' + res.status + ' ' + tokens.error);
    const bearer = { headers: { Authorization: 'Bearer ' + tokens.access_token } };
    const info = await fetch(meta.userinfo_endpoint, bearer);
    const claims = await info.json();
    steps.push('Signed in as ' + claims.email);
    const revoked = await fetch(meta.revocation_endpoint, {
      method: 'POST',
      body: new URLSearchParams({ client_id: config.clientId, token: tokens.access_token }),
    });
    await revoked.text();
    steps.push('revoked: ' + revoked.status);
    const again = await fetch(meta.userinfo_endpoint, bearer);
    await again.text();
    steps.push('userinfo then: ' + again.status + ' ' + (again.headers.get('WWW-Authenticate') || '').split(' ')[0]);
    out.dataset.state = 'signed-in';
  } catch (e) {
    steps.push('Failed: ' + e.name + ': ' + e.message);
    out.dataset.state = 'failed';
  }
  out.textContent = steps.join('; ');
}
`;

/** Serves the app on loopback `port`: its page (at / and /callback), script and config. */
async function startApp(config, port) {
  const origin = `http://127.0.0.1:${port}`;
  const server = createServer((req, res) => {
    const { pathname } = new URL(req.url, origin);
    if (pathname === '/' || pathname === '/callback') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
    } else if (pathname === '/app.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(APP);
    } else if (pathname === '/config.json') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(config));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((ok) => server.listen(port, '127.0.0.1', ok));
  return { origin, stop: () => new Promise((ok) => server.close(ok)) };
}

/** From the app's page through Gatehouse (signing in if asked) back to its callback. */
async function signInFromApp({ page, j, server, app, account }) {
  await page.goto(`${app.origin}/`);
  await page.waitForFunction(() => document.readyState === 'complete');
  await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in with Gatehouse' }).click());
  if (new URL(page.url()).origin === server.base && path(page) === '/login') {
    await j.visited(page, 'sign in, for the single-page app');
    await page.getByLabel('E-mail address').fill(account.email);
    await page.getByLabel('Password', { exact: true }).fill(account.password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in' }).click());
    await answerSecondFactor({ page, j, server, email: account.email });
  }
  await page.waitForURL((u) => u.origin === app.origin && u.pathname === '/callback', { timeout: 15_000 });
  await page.waitForSelector('#result[data-state]', { timeout: 15_000 });
  return page.locator('#result').textContent();
}

test('a single-page app on its registered origin signs in with fetch; the same app on another origin is refused by the browser', async () => {
  const server = await startServer();
  const j = new Journey(browser, 'single-page app', server.base);
  const stops = [];
  try {
    const account = await createVerifiedUser(server);
    const ports = [await freePort(), await freePort()];
    const [mine, other] = ports.map((p) => `http://127.0.0.1:${p}`);
    const out = await server.cli([
      'client', 'create', '--name', 'Notes', '--public', '--first-party',
      '--redirect-uri', `${mine}/callback`,
      '--redirect-uri', `${other}/callback`,
      '--web-origin', mine,
    ]);
    const { client_id: clientId, client_secret: secret } = JSON.parse(out.split('\n').find((l) => l.startsWith('{')));
    assert.equal(secret, null, 'a public client has no secret');
    const listed = (await server.cli(['client', 'list'])).split('\n').filter(Boolean).map((l) => JSON.parse(l));
    assert.deepEqual(listed.find((c) => c.client_id === clientId).web_origins, [mine]);

    // Started on the very ports registered above.
    const apps = [];
    for (const port of ports) {
      const app = await startApp({ issuer: server.base, clientId }, port);
      stops.push(app.stop);
      apps.push(app);
    }
    const [appMine, appOther] = apps;

    const page = await j.newPage();
    const result = await signInFromApp({ page, j, server, app: appMine, account });
    assert.equal(
      result,
      `Signed in as ${account.email}; revoked: 200; userinfo then: 401 Bearer`,
      'the app read its tokens, the userinfo answer, the revocation and the refusal after it',
    );
    // The last userinfo call's 401 is the browser's only complaint.
    assert.ok(page.problems.every((p) => /\b401\b/.test(p)), `only the expected 401: ${page.problems}`);
    page.problems.length = 0;

    // The same app from an origin the client did not register: Gatehouse redirects
    // to its registered callback with a code, but its page may not read the answer.
    const result2 = await signInFromApp({ page, j, server, app: appOther, account });
    assert.match(result2, /^Failed: TypeError: /, `fetch to the token endpoint fails: ${result2}`);
    assert.ok(
      page.problems.some((p) => /CORS policy/.test(p) && /oauth2\/token/.test(p)),
      `the browser blocked the token answer by CORS: ${page.problems}`,
    );
    page.problems.length = 0;
  } catch (e) {
    const tail = server.log().split('\n').slice(-40).join('\n');
    e.message += `\n--- pages visited: ${j.pagesVisited.join(' → ')}\n--- last server log lines:\n${tail}`;
    throw e;
  } finally {
    for (const stop of stops) await stop().catch(() => {});
    await server.stop();
  }
});
