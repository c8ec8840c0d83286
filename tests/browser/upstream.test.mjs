// "Continue with <upstream>" in a real browser: a second Gatehouse on its own
// database is the upstream OpenID provider, reached by another host name
// (localhost, while this one is 127.0.0.1) so that each keeps its own cookies, as two
// sites do. The journey goes through the upstream's real sign-in page and back, with
// every page checked (CSP, console, subresources, cookies, screenshots, axe-core).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Journey, launchBrowser, checkVisitedPages } from './lib/browser.mjs';
import { startServer } from './lib/server.mjs';
import { assertSessionCookies, createVerifiedUser, heading, leadsToPage, path } from './lib/steps.mjs';

const NAME = 'up';
const LABEL = 'Upstream Gatehouse';

let browser;
const journeys = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/**
 * The downstream (this Gatehouse) and the upstream (another one, at localhost), the
 * upstream's client for the downstream made with its command line and registered
 * here with `gatehouse upstream add`.
 */
async function twoServers() {
  const down = await startServer();
  let up;
  try {
    up = await startServer({ host: 'localhost' });
    const made = JSON.parse(
      await up.cli([
        'client', 'create', '--name', 'Downstream Gatehouse', '--first-party',
        '--redirect-uri', `${down.base}/login/upstream/${NAME}/callback`,
        '--backchannel-logout-uri', `${down.base}/login/upstream/${NAME}/backchannel-logout`,
      ]),
    );
    await down.cli(
      ['upstream', 'add', '--name', NAME, '--kind', 'oidc', '--issuer', up.base, '--client-id', made.client_id, '--label', LABEL],
      `${made.client_secret}\n`,
    );
    return { down, up };
  } catch (e) {
    await up?.stop().catch(() => {});
    await down.stop();
    throw e;
  }
}

test('continue with an upstream Gatehouse: its sign-in page, back signed in, the device list says how', async () => {
  const { down, up } = await twoServers();
  const j = new Journey(browser, 'continue-with-upstream', down.base);
  journeys.push(j);
  let context;
  try {
    const { email, password } = await createVerifiedUser(up);
    const page = await j.newPage();
    context = page.context();

    // The button appears on /login within moments of `upstream add`.
    for (let i = 0; ; i++) {
      await page.goto('/login');
      if (await page.getByRole('button', { name: `Continue with ${LABEL}` }).count()) break;
      assert.ok(i < 50, `no "Continue with ${LABEL}" button on /login`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await j.visited(page, 'sign in with buttons');
    await leadsToPage(page, () => page.getByRole('button', { name: `Continue with ${LABEL}` }).click());
    await page.waitForURL((u) => u.origin === up.base && u.pathname === '/login');
    assert.equal(new URL(page.url()).origin, up.base, `at the upstream (is at ${page.url()})`);
    await j.visited(page, 'upstream sign in');

    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.waitForURL((u) => u.origin === down.base && u.pathname === '/account');
    await page.waitForLoadState('load');
    assert.equal(path(page), '/account', `back here, signed in (is at ${page.url()})`);
    assert.equal(await heading(page), 'Your account');
    assert.match(await page.locator('main').textContent(), new RegExp(email.replace(/[.]/g, '\\.')));
    await assertSessionCookies(page);
    await j.visited(page, 'account');

    await page.goto('/account/devices');
    assert.match(await page.locator('li.device.current').textContent(), new RegExp(`Signed in with ${LABEL}`));
    await j.visited(page, 'devices');

    await page.goto('/account/connections');
    assert.match(await page.locator('main').textContent(), new RegExp(LABEL));
    await j.visited(page, 'connections');

    // The account came from the upstream: no password, one link.
    assert.equal(
      await down.sql(`SELECT password_hash IS NULL FROM users WHERE email = '${email}'`),
      't',
    );
    assert.equal(await down.sql('SELECT count(*) FROM federated_identities'), '1');

    // Signing out at the upstream ends the session here (its back-channel logout).
    await page.goto(`${up.base}/account`);
    await j.visited(page, 'upstream account');
    await leadsToPage(page, () => page.locator('header').getByRole('button', { name: 'Sign out' }).click());
    let live = '1';
    for (let i = 0; i < 50 && live !== '0'; i++) {
      live = await down.sql('SELECT count(*) FROM sessions WHERE revoked_at IS NULL');
      if (live !== '0') await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(live, '0', 'the session here ended with the upstream one');
    await page.goto(`${down.base}/account`);
    assert.equal(path(page), '/login', `signed out here too (is at ${page.url()})`);
    await j.visited(page, 'signed out here');
    await j.finish();
  } catch (e) {
    const tail = (s) => s.log().split('\n').slice(-30).join('\n');
    e.message += `\n--- pages visited: ${j.pagesVisited.join(' → ')}\n--- downstream log:\n${tail(down)}\n--- upstream log:\n${tail(up)}`;
    throw e;
  } finally {
    await context?.close().catch(() => {});
    await up.stop();
    await down.stop();
  }
});

checkVisitedPages(journeys);
