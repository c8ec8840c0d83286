// Device Bound Session Credentials in a shipping browser: Debian's Chromium, with
// software keys (Linux has no TPM it uses), against Gatehouse serving HTTPS itself
// with the test certificate, which Chromium trusts through
// `--ignore-certificate-errors-spki-list` (lib/browser.mjs `dbscArgs`). The journey:
// sign in, the browser registers a key (the device list shows the session as
// bound), the bound cookie lapses (GATEHOUSE_DBSC_COOKIE_TTL=5s, allowed in dev mode)
// and the browser renews it with its key, and the session cookie copied out of that
// browser into another one is refused there and flags the session. The DevTools
// protocol's device-bound-session events (`Network.enableDeviceBoundSessions`) show
// the registration and the refreshes as the browser saw them.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Journey, checkVisitedPages, dbscArgs, launchBrowser } from './lib/browser.mjs';
import { sleep, startServer, tlsSpki } from './lib/server.mjs';
import { createVerifiedUser, heading, path, signIn } from './lib/steps.mjs';

const BOUND_TTL_SECS = 5;
// Another address than the owner's: the copy is used elsewhere, as a stolen cookie is
// (the server believes X-Forwarded-For from 127.0.0.1, GATEHOUSE_TRUSTED_PROXIES).
const THIEF_ADDRESS = '203.0.113.9';

let browser;
const journeys = [];

before(async () => {
  browser = await launchBrowser({ args: dbscArgs(tlsSpki()) });
});

after(async () => {
  await browser?.close();
});

/** Records the device-bound-session events Chromium reports for `page`'s tab. */
async function watchDbsc(page) {
  const cdp = await page.context().newCDPSession(page);
  const events = [];
  cdp.on('Network.deviceBoundSessionEventOccurred', (e) => events.push(e));
  await cdp.send('Network.enable');
  await cdp.send('Network.enableDeviceBoundSessions', { enable: true });
  return {
    events,
    created: () => events.filter((e) => e.creationEventDetails),
    refreshed: () => events.filter((e) => e.refreshEventDetails?.refreshResult === 'Refreshed' && e.succeeded),
    /** Waits until `pick()` finds something; returns it. */
    async waitFor(what, pick, timeout = 15_000) {
      const deadline = Date.now() + timeout;
      for (;;) {
        const found = pick();
        if (found.length) return found;
        if (Date.now() > deadline) {
          throw new Error(`no ${what} within ${timeout} ms; events: ${JSON.stringify(events, null, 1)}`);
        }
        await sleep(100);
      }
    },
  };
}

async function cookie(page, name) {
  return (await page.context().cookies()).find((c) => c.name === name);
}

test('Chromium binds its session to a key over HTTPS, renews the bound cookie with it, and a copied session cookie is refused and flagged', async (t) => {
  const server = await startServer({
    host: 'localhost',
    https: true,
    env: { GATEHOUSE_DBSC_COOKIE_TTL: `${BOUND_TTL_SECS}s`, GATEHOUSE_TRUSTED_PROXIES: '127.0.0.1/32' },
  });
  t.after(() => server.stop());
  assert.ok(server.base.startsWith('https://localhost:'), server.base);
  const j = new Journey(browser, 'device-bound session', server.base);
  journeys.push(j);
  const { email, password } = await createVerifiedUser(server);

  // Sign in: the answer offers binding, and the browser registers a key at once.
  const page = await j.newPage();
  const dbsc = await watchDbsc(page);
  await signIn({ page, j, server, email, password });
  const [created] = await dbsc.waitFor('registration', dbsc.created);
  assert.equal(created.succeeded, true, `registration: ${JSON.stringify(created)}`);
  assert.equal(created.creationEventDetails.fetchResult, 'Success', JSON.stringify(created));
  const sessionId = created.sessionId;
  const stored = await server.sql(`SELECT id, dbsc_thumbprint IS NOT NULL FROM sessions WHERE revoked_at IS NULL`);
  assert.equal(stored, `${sessionId}|t`, 'the session the browser registered is the live one, with its key stored');
  // Production cookie names over https, even in dev mode.
  assert.ok(await cookie(page, '__Host-gatehouse_session'), 'a __Host- session cookie');
  const firstBound = await cookie(page, '__Host-gatehouse_bound');
  assert.ok(firstBound?.secure && firstBound.httpOnly, `a Secure, HttpOnly bound cookie: ${JSON.stringify(firstBound)}`);

  // The device list shows the session as bound.
  await page.goto('/account/devices');
  await j.visited(page, 'devices, bound');
  const current = page.locator('li.device.current');
  assert.match(await current.innerText(), /Protected by this device.s security chip/);

  // The bound cookie lapses; the next page is still signed in, because the browser
  // renewed the cookie with a fresh proof by its key.
  const refreshesBefore = dbsc.refreshed().length;
  await sleep((BOUND_TTL_SECS + 2) * 1000);
  await page.goto('/account');
  assert.equal(path(page), '/account', `still signed in after the bound cookie lapsed (at ${page.url()}: ${await heading(page)})`);
  await j.visited(page, 'account, after the bound cookie lapsed');
  await dbsc.waitFor('refresh', () => dbsc.refreshed().slice(refreshesBefore));
  const renewed = await cookie(page, '__Host-gatehouse_bound');
  assert.notEqual(renewed?.value, firstBound.value, 'a new bound cookie');
  const refreshed = Number(await server.sql(`SELECT count(*) FROM dbsc_used_challenges WHERE session_id = '${sessionId}'`));
  assert.ok(refreshed >= 2, `the server saw the registration and at least one refresh (${refreshed} proofs)`);

  // The session cookie alone, copied into another browser used elsewhere: refused
  // (sent to sign in), and the session is flagged.
  const stolen = await cookie(page, '__Host-gatehouse_session');
  const copy = await j.newPage();
  await copy.context().setExtraHTTPHeaders({ 'X-Forwarded-For': THIEF_ADDRESS });
  await copy.context().addCookies([{ name: stolen.name, value: stolen.value, url: server.base, secure: true, httpOnly: true, sameSite: 'Lax' }]);
  await copy.goto('/account');
  assert.equal(path(copy), '/login', `the copy is not signed in (at ${copy.url()})`);
  await j.visited(copy, 'copied cookie refused');
  const flag = await server.sql(`SELECT risk_flagged, risk_reason FROM sessions WHERE id = '${sessionId}'`);
  assert.equal(flag, 't|Used without its device key');
  await server.mail.waitFor(email, /Unusual activity on your account/);
  const live = await server.sql(`SELECT count(*) FROM sessions WHERE id = '${sessionId}' AND revoked_at IS NULL`);
  assert.equal(live, '1', 'the owner keeps the session');

  // The owner's browser, now that a copy is known to be out, proves a second factor
  // before it shows an account page again.
  await page.goto('/account');
  assert.equal(path(page), '/step-up', `the owner is asked to prove a second factor (at ${page.url()})`);
  await j.visited(page, 'owner asked to step up');
  await j.finish();
});

checkVisitedPages(journeys);
