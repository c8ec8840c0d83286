// Passkeys through the real pages, with Chromium's virtual authenticator (the
// DevTools protocol's WebAuthn domain) standing in for a device's screen lock: add a
// passkey after a mailed step-up, sign out, sign in with the passkey's button, then
// once more by the sign-in page's autofill. The server is named `localhost`: WebAuthn
// refuses an IP address as relying-party id, and the server offers passkeys only
// under a host name. Every page visited gets the suite's checks (CSP, console,
// subresources, cookies, screenshots, axe-core).
//
// Two ways Chromium's virtual environment differs from a person at a real device,
// both about the autofill (conditional mediation) ceremony every /login page starts
// on load:
// - With a virtual authenticator that holds no passkey for the site, that ceremony
//   is refused at once (NotAllowedError) instead of waiting. The page says nothing
//   about it (a refusal of a ceremony the person never started is not news), but the
//   authenticator is attached only once the journey comes to add a passkey, as a
//   person's device would offer nothing before.
// - With one that holds a passkey, Chromium picks the account itself, so the
//   autofill ceremony signs in on its own as soon as /login is shown. Turning the
//   authenticator's presence simulation off makes it wait instead, as it would for a
//   person who never opens the autofill list.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { Journey, launchBrowser, checkVisitedPages } from './lib/browser.mjs';
import { startServer } from './lib/server.mjs';
import { answerSecondFactor, assertSessionCookies, heading, leadsToPage, newAccount, path, signOut } from './lib/steps.mjs';

// Screenshots to look at by hand, outside the repository (the Journey's own go to
// target/screenshots/<journey>/).
const SHOTS = process.env.GATEHOUSE_PASSKEY_SHOTS || '/tmp/shots';

let browser;
const journeys = [];

before(async () => {
  browser = await launchBrowser();
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
});

/**
 * A platform authenticator on this page's tab (it stays across navigations there):
 * CTAP 2.1 over the internal transport, holding discoverable credentials, verifying
 * the user, and answering tests of presence at once.
 */
async function virtualAuthenticator(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      ctap2Version: 'ctap2_1',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return {
    /** Whether tests of user presence succeed at once (on) or never resolve (off). */
    async presence(enabled) {
      await cdp.send('WebAuthn.setAutomaticPresenceSimulation', { authenticatorId, enabled });
    },
    async credentials() {
      return (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
    },
  };
}

/**
 * Watches the sign-in ceremonies this page runs: the ceremony id the server gave
 * each options request (`conditional`: the autofill one; the latest of each kind),
 * and the ids of the ceremonies finished at POST /webauthn/sign-in.
 * `beforeOptions(conditional)` runs before an options request goes on to the server.
 */
async function watchSignInCeremonies(page, beforeOptions = async () => {}) {
  const options = new Map();
  const waiting = new Map();
  const finished = [];
  const pattern = /\/webauthn\/sign-in(\/options)?$/;
  const handler = async (route) => {
    const req = route.request();
    if (new URL(req.url()).pathname === '/webauthn/sign-in') finished.push(req.postDataJSON().ceremony);
    else await beforeOptions(!!req.postDataJSON().conditional);
    return route.continue();
  };
  const onResponse = async (res) => {
    const req = res.request();
    if (new URL(req.url()).pathname !== '/webauthn/sign-in/options' || res.status() !== 200) return;
    const conditional = !!req.postDataJSON().conditional;
    const { ceremony } = await res.json();
    options.set(conditional, ceremony);
    waiting.get(conditional)?.(ceremony);
    waiting.delete(conditional);
  };
  await page.route(pattern, handler);
  page.on('response', onResponse);
  return {
    /** Waits for the ceremony id of the autofill (true) or the button (false). */
    optionsFor(conditional) {
      if (options.has(conditional)) return Promise.resolve(options.get(conditional));
      return new Promise((ok) => waiting.set(conditional, ok));
    },
    finished: () => [...finished],
    async stop() {
      page.off('response', onResponse);
      await page.unroute(pattern, handler);
    },
  };
}

test('add a passkey after a mailed step-up, sign out, sign in with the passkey', async () => {
  const server = await startServer({ host: 'localhost' });
  assert.match(server.base, /^http:\/\/localhost:\d+$/);
  const j = new Journey(browser, 'passkey-add-and-sign-in', server.base);
  journeys.push(j);
  let page;
  try {
    page = await j.newPage();
    const { email, password } = newAccount();

    // A new account, its address confirmed by the mailed link (the suite's server
    // requires a verified address), then signed in with the password.
    await page.goto('/register');
    await j.visited(page, 'register');
    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Create account' }).click());
    assert.equal(await heading(page), 'Check your inbox');
    await j.visited(page, 'check your inbox');
    await page.goto(await server.mail.verificationLink(email));
    await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm my address' }).click());
    assert.equal(await heading(page), 'Address confirmed');
    await j.visited(page, 'address confirmed');

    await leadsToPage(page, () => page.getByRole('link', { name: 'Sign in' }).click());
    assert.equal(path(page), '/login');
    assert.equal(new URL(page.url()).hostname, 'localhost', 'the pages are opened under the host name');
    // Passkeys are offered: the script showed the button.
    await page.getByRole('button', { name: 'Sign in with a passkey' }).waitFor();
    await j.visited(page, 'sign in, no passkey yet');
    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in', exact: true }).click());
    await answerSecondFactor({ page, j, server, email });
    assert.equal(path(page), '/account', `signed in at /account (is at ${page.url()}: ${await heading(page)})`);
    assert.match(await page.locator('main').textContent(), /Passkeys\s*None/);
    await j.visited(page, 'account, password');

    // The device's authenticator, from here on (see the note at the top).
    const authenticator = await virtualAuthenticator(page);

    // Adding a passkey needs a recent second factor: the mailed code at /step-up.
    await page.goto('/account/passkeys');
    assert.equal(await heading(page), 'Passkeys');
    assert.match(await page.locator('main').textContent(), /You have no passkeys yet/);
    await j.visited(page, 'passkeys, none');
    const confirm = page.getByRole('link', { name: "Confirm it's you to add or change passkeys" });
    assert.equal(await confirm.count(), 1, 'a step-up is asked for before adding a passkey');
    await leadsToPage(page, () => confirm.click());
    assert.equal(path(page), '/step-up');
    assert.equal(new URL(page.url()).searchParams.get('return_to'), '/account/passkeys');
    await j.visited(page, 'step-up');
    server.mail.markAllRead();
    await leadsToPage(page, () => page.getByRole('button', { name: 'Send the code' }).click());
    await j.visited(page, 'step-up, code sent');
    await page.locator('#code').fill(await server.mail.oneTimeCode(email));
    await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm' }).click());
    assert.equal(path(page), '/account/passkeys', `back at /account/passkeys after step-up (is at ${page.url()})`);

    // The script shows the "Add a passkey" section (and hides the no-script note).
    const add = page.getByRole('region', { name: 'Add a passkey' });
    await add.waitFor();
    assert.equal(await page.locator('[data-passkey-unsupported]').isVisible(), false);
    await j.visited(page, 'passkeys, fresh');
    await page.locator('#passkey-name').fill('Test laptop');
    await leadsToPage(page, () => add.getByRole('button', { name: 'Add a passkey' }).click());
    assert.equal(path(page), '/account/passkeys', `the list again after adding (is at ${page.url()})`);
    assert.equal(new URL(page.url()).search, '?added=1');
    await page.getByRole('status').filter({ hasText: 'Your passkey was added' }).waitFor();
    const listed = page.locator('ul.passkeys > li');
    assert.equal(await listed.count(), 1, 'one passkey listed');
    assert.equal((await listed.locator('strong').textContent()).trim(), 'Test laptop');
    assert.match(await listed.textContent(), /never used/);
    await j.visited(page, 'passkeys, one added');
    await page.screenshot({ path: `${SHOTS}/account-passkeys-one.png`, fullPage: true });

    let creds = await authenticator.credentials();
    assert.equal(creds.length, 1, 'the authenticator holds one credential');
    assert.equal(creds[0].isResidentCredential, true, 'a discoverable (resident) credential');
    assert.equal(creds[0].rpId, 'localhost');

    // Signed out, then in by the button. The autofill ceremony the page starts on
    // load waits (presence off); the button aborts it and runs its own, which gets
    // presence back just before its options reach the page, and must be the one
    // that signs in.
    const ceremonies = await watchSignInCeremonies(page, async (conditional) => {
      if (!conditional) await authenticator.presence(true);
    });
    await authenticator.presence(false);
    await signOut(page, j);
    const button = page.getByRole('button', { name: 'Sign in with a passkey' });
    await button.waitFor();
    await ceremonies.optionsFor(true);
    assert.equal(await page.locator('[data-passkey-error]').isVisible(), false, 'no passkey error shown');
    await page.screenshot({ path: `${SHOTS}/login.png`, fullPage: true });
    await j.visited(page, 'sign in, autofill waiting');
    await leadsToPage(page, () => button.click());
    assert.equal(path(page), '/account', `signed in with the passkey (is at ${page.url()}: ${await heading(page)})`);
    assert.deepEqual(ceremonies.finished(), [await ceremonies.optionsFor(false)], "the button's ceremony signed in, once");
    const account = await page.locator('main').textContent();
    assert.match(account, /Signed in[^]*with passkey/);
    assert.match(account, /Passkeys\s*1/);
    await assertSessionCookies(page);
    await j.visited(page, 'account, passkey');
    await ceremonies.stop();

    creds = await authenticator.credentials();
    assert.equal(creds.length, 1, 'still one credential');
    assert.equal(creds[0].isResidentCredential, true);
    assert.ok(creds[0].signCount >= 1, `the credential was used (signCount ${creds[0].signCount})`);

    await page.goto('/account/devices');
    await j.visited(page, 'devices');
    const current = page.locator('li.device.current');
    assert.equal(await current.count(), 1, 'this browser is listed');
    assert.match(await current.textContent(), /Proved with\s*Passkey\s*Assurance/);

    await page.goto('/account/passkeys');
    assert.match(await page.locator('ul.passkeys > li').textContent(), /last used/);
    await j.visited(page, 'passkeys, used');

    // Signed out once more, with presence on: the autofill ceremony (Chromium's
    // virtual environment choosing the account) signs in without a click.
    const autofill = await watchSignInCeremonies(page);
    const used = creds[0].signCount;
    const signedInAgain = page.waitForURL((u) => u.pathname === '/account', { timeout: 15_000 });
    await page.locator('header').getByRole('button', { name: 'Sign out' }).click();
    await signedInAgain.catch((e) => {
      throw new Error(`the autofill ceremony did not sign in by itself (is at ${page.url()}): ${e.message}`);
    });
    await page.waitForLoadState('load');
    assert.deepEqual(autofill.finished(), [await autofill.optionsFor(true)], 'the autofill ceremony signed in, once');
    assert.match(await page.locator('main').textContent(), /Signed in[^]*with passkey/);
    await j.visited(page, 'account, passkey by autofill');
    await autofill.stop();
    creds = await authenticator.credentials();
    assert.ok(creds[0].signCount > used, `the counter went on (${used} → ${creds[0].signCount})`);

    await j.finish();
  } catch (e) {
    const tail = server.log().split('\n').slice(-40).join('\n');
    e.message += `\n--- pages visited: ${j.pagesVisited.join(' → ')}\n--- last server log lines:\n${tail}`;
    throw e;
  } finally {
    await page?.context().close().catch(() => {});
    await server.stop();
  }
});

checkVisitedPages(journeys);
