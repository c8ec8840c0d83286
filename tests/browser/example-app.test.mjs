// The example relying party (examples/relying-party/) signs a person in through
// Gatehouse and back, in a real browser: password, authenticator code, the consent
// page, and the redirects to the app that follow those form POSTs. Chrome applies
// CSP `form-action` to the redirects after a form POST, so a Gatehouse page whose
// policy kept `form-action 'self'` would strand the person on it; this journey
// proves none does. Gatehouse's pages get the suite's per-page checks; the app's
// own pages are not Gatehouse's and get none (only screenshots).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { Journey, launchBrowser, checkVisitedPages } from './lib/browser.mjs';
import { startRelyingParty } from './lib/relying-party.mjs';
import { startServer } from './lib/server.mjs';
import { answerSecondFactor, createVerifiedUser, heading, leadsToPage, path, signIn } from './lib/steps.mjs';
import { base32Decode, currentStep, totpAt } from './lib/totp.mjs';

const run = promisify(execFile);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser;
const journeys = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/**
 * An authenticator app that never shows the same time step twice (the server refuses
 * a step already used): the current step, or the one after the last used, which the
 * server's one step of skew accepts once the clock is at most one step behind it.
 */
class Authenticator {
  constructor(secret, lastStep) {
    this.secret = secret;
    this.last = lastStep;
  }

  async code() {
    let step = currentStep();
    if (step <= this.last) {
      step = this.last + 1;
      while (currentStep() < step - 1) await sleep(250);
    }
    this.last = step;
    return totpAt(this.secret, step);
  }
}

/** Turns the authenticator app on for the person signed in on `page`, as the TOTP journey does. */
async function enrolAuthenticator({ page, j, server, email }) {
  await page.goto('/account/mfa');
  await j.visited(page, 'security, off');
  await leadsToPage(page, () => page.getByRole('link', { name: 'Set up an authenticator app' }).click());
  assert.equal(path(page), '/step-up');
  await j.visited(page, 'step-up, mailed');
  server.mail.markAllRead();
  await leadsToPage(page, () => page.getByRole('button', { name: 'Send the code' }).click());
  await j.visited(page, 'step-up, code sent');
  await page.locator('#code').fill(await server.mail.oneTimeCode(email));
  await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm' }).click());
  assert.equal(path(page), '/account/mfa', `back at /account/mfa after step-up (is at ${page.url()})`);

  await leadsToPage(page, () => page.getByRole('button', { name: 'Set up an authenticator app' }).click());
  await page.getByText("Can't scan it? Enter the key by hand").click();
  const secret = base32Decode((await page.locator('code.secret').textContent()).trim());
  await j.visited(page, 'security, enrol');
  const step = currentStep();
  await page.getByLabel('Code from the app').fill(totpAt(secret, step));
  await leadsToPage(page, () => page.getByRole('button', { name: 'Turn on two-step verification' }).click());
  assert.equal(await page.locator('ol.codes li').count(), 10, 'ten recovery codes');
  await leadsToPage(page, () => page.getByRole('link', { name: 'I have saved them' }).click());
  assert.match(await page.locator('main').textContent(), /On since/);
  await j.visited(page, 'security, on');
  return new Authenticator(secret, step);
}

/**
 * Every securitypolicyviolation fired in any document of the page's context, kept
 * outside the page: a form-action violation fires on the document that sent the form,
 * which is gone once the browser has moved on (the suite's own listener keeps them in
 * that document's window).
 */
async function recordCspViolations(page) {
  const seen = [];
  const context = page.context();
  await context.exposeBinding('__gatehouseCspViolation', ({ frame }, v) => seen.push({ page: frame.url(), ...v }));
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__gatehouseCspViolation({ directive: e.effectiveDirective, blocked: e.blockedURI, policy: e.originalPolicy });
    });
  });
  return seen;
}

/** Ages the sessions' last second-factor proof past the 10-minute step-up freshness. */
async function ageSecondFactor(server) {
  await run('psql', [server.env.GATEHOUSE_DATABASE_URL, '-v', 'ON_ERROR_STOP=1', '-qtAc',
    "UPDATE sessions SET aal_reached_at = aal_reached_at - interval '11 minutes'"]);
}

async function journey(name, body) {
  const server = await startServer();
  const j = new Journey(browser, name, server.base);
  journeys.push(j);
  const contexts = [];
  const cleanups = [];
  const newPage = async () => {
    const page = await j.newPage();
    contexts.push(page.context());
    return page;
  };
  try {
    await body({ server, j, newPage, cleanups });
  } catch (e) {
    const tail = server.log().split('\n').slice(-40).join('\n');
    e.message += `\n--- pages visited: ${j.pagesVisited.join(' → ')}\n--- last server log lines:\n${tail}`;
    throw e;
  } finally {
    for (const c of contexts) await c.close().catch(() => {});
    for (const f of cleanups) await f().catch(() => {});
    await server.stop();
  }
}

test('the example app signs in through Gatehouse (password, authenticator, consent) and back; step-up', async () => {
  await journey('example-app-sign-in', async ({ server, j, newPage, cleanups }) => {
    const { email, password } = await createVerifiedUser(server);

    // In one browser: sign in and turn on the authenticator app.
    const setup = await newPage();
    await signIn({ page: setup, j, server, email, password });
    const authenticator = await enrolAuthenticator({ page: setup, j, server, email });

    const rp = await startRelyingParty(server);
    cleanups.push(() => rp.stop());
    const appFailure = (what) => `${what}\n--- example app log:\n${rp.log()}`;

    // In another browser: from the app to Gatehouse.
    const page = await newPage();
    const violations = await recordCspViolations(page);
    // The app names no icon and has no /favicon.ico: Chromium's own request for it
    // would be blamed on Gatehouse's pages (see the favicon test below).
    await page.context().route(`${rp.url}/favicon.ico`, (r) => r.fulfill({ status: 204, body: '' }));
    await page.goto(`${rp.url}/`);
    assert.match(await page.locator('body').textContent(), /Not signed in/);
    await j.screenshots(page, 'app, not signed in');
    await leadsToPage(page, () => page.getByRole('link', { name: 'Sign in with Gatehouse' }).click());
    assert.equal(new URL(page.url()).origin, server.base, `the app sent the browser to Gatehouse (is at ${page.url()})`);
    assert.equal(path(page), '/login');
    await j.visited(page, 'sign in, for the app');

    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in' }).click());
    assert.equal(path(page), '/login/verify', `an authenticator code is asked for (is at ${page.url()})`);
    const code = await authenticator.code();
    await answerSecondFactor({ page, j, server, email, totp: () => code });

    assert.equal(path(page), '/oauth2/consent', `the consent page (is at ${page.url()}: ${await heading(page)})`);
    assert.equal(await heading(page), 'Allow Example app?');
    await j.visited(page, 'consent');

    // Allow: a form POST answered by a redirect to the app's /callback, then to its /.
    const landed = page
      .waitForURL((u) => u.origin === rp.url, { timeout: 15_000, waitUntil: 'load' })
      .then(() => true, () => false);
    await page.getByRole('button', { name: 'Allow' }).click();
    assert.ok(
      await landed,
      appFailure(`Allow did not lead to the app: still at ${page.url()}; CSP violations ${JSON.stringify(violations)}; problems ${JSON.stringify(page.problems)}`),
    );
    await page.waitForLoadState('load');
    assert.equal(page.url(), `${rp.url}/`, 'back on the app’s home page');
    assert.deepEqual(violations, [], 'no securitypolicyviolation on the way from Gatehouse to the app');
    assert.deepEqual(page.problems, [], 'no console error or failed request on the way back to the app');
    const home = await page.locator('body').textContent();
    assert.ok(home.includes(`Signed in as ${email}`), appFailure(`the app says who is signed in: ${home}`));
    await j.screenshots(page, 'app, signed in');

    await leadsToPage(page, () => page.getByRole('link', { name: 'Call the API' }).click());
    assert.equal(page.url(), `${rp.url}/call`);
    const answer = await page.locator('body').textContent();
    assert.match(answer, /HTTP 200/, appFailure(`the app's API accepted the access token: ${answer}`));
    assert.equal(JSON.parse(await page.locator('pre').textContent()).client_id, rp.clientId);
    await j.screenshots(page, 'app, API answer');
    page.problems.length = 0;

    // A sensitive Gatehouse page once the second factor is no longer fresh: step-up
    // with the authenticator, then the page itself.
    await ageSecondFactor(server);
    await page.goto('/account/password');
    assert.equal(path(page), '/step-up', `a stale second factor is asked again (is at ${page.url()})`);
    assert.equal(new URL(page.url()).searchParams.get('return_to'), '/account/password');
    await j.visited(page, 'step-up, authenticator');
    await page.locator('#code').fill(await authenticator.code());
    await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm' }).click());
    assert.equal(path(page), '/account/password', `back at /account/password after step-up (is at ${page.url()})`);
    assert.equal(await heading(page), 'Change your password');
    assert.equal(await page.locator('form[action="/account/password"] #current_password').count(), 1, 'its form is shown');
    await j.visited(page, 'change password');
    assert.deepEqual(violations, [], 'no securitypolicyviolation on any Gatehouse page');

    // A third browser, consent remembered: the POST at /login/verify itself is
    // answered by the redirect to the app (the other path form-action would block).
    const again = await newPage();
    const againViolations = await recordCspViolations(again);
    await again.context().route(`${rp.url}/favicon.ico`, (r) => r.fulfill({ status: 204, body: '' }));
    await again.goto(`${rp.url}/`);
    await leadsToPage(again, () => again.getByRole('link', { name: 'Sign in with Gatehouse' }).click());
    assert.equal(path(again), '/login');
    await again.getByLabel('E-mail address').fill(email);
    await again.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(again, () => again.getByRole('button', { name: 'Sign in' }).click());
    assert.equal(path(again), '/login/verify', `an authenticator code is asked for (is at ${again.url()})`);
    await again.locator('#code').fill(await authenticator.code());
    const backAtApp = again
      .waitForURL((u) => u.origin === rp.url, { timeout: 15_000, waitUntil: 'load' })
      .then(() => true, () => false);
    await again.getByRole('button', { name: 'Sign in' }).click();
    assert.ok(
      await backAtApp,
      appFailure(`the code did not lead to the app: at ${again.url()}; CSP ${JSON.stringify(againViolations)}`),
    );
    await again.waitForLoadState('load');
    assert.ok((await again.locator('body').textContent()).includes(`Signed in as ${email}`));
    assert.deepEqual(againViolations, [], 'no securitypolicyviolation from /login/verify to the app');
  });
});

test('an app asking for a second factor: a mistyped step-up code, then the right one, lands on the app', async () => {
  await journey('example-app-step-up-retry', async ({ server, j, newPage, cleanups }) => {
    const { email, password } = await createVerifiedUser(server);
    const rp = await startRelyingParty(server);
    cleanups.push(() => rp.stop());
    const appFailure = (what) => `${what}\n--- example app log:\n${rp.log()}`;

    const page = await newPage();
    const violations = await recordCspViolations(page);
    await page.context().route(`${rp.url}/favicon.ico`, (r) => r.fulfill({ status: 204, body: '' }));

    // First the app gets a password-only sign-in, and consent is remembered.
    await page.goto(`${rp.url}/`);
    await leadsToPage(page, () => page.getByRole('link', { name: 'Sign in with Gatehouse' }).click());
    assert.equal(path(page), '/login');
    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in' }).click());
    assert.equal(path(page), '/oauth2/consent', `the consent page (is at ${page.url()})`);
    await page.getByRole('button', { name: 'Allow' }).click();
    await page.waitForURL((u) => u.origin === rp.url, { timeout: 15_000, waitUntil: 'load' });
    assert.match(await page.locator('body').textContent(), /Assurance: urn:gatehouse:aal1/);

    // Now the app asks for a second factor: Gatehouse's step-up, by an e-mailed code.
    await leadsToPage(page, () => page.locator('form[action="/logout"] button').click());
    await leadsToPage(page, () => page.getByRole('link', { name: 'Sign in with a second factor' }).click());
    assert.equal(path(page), '/step-up', `the app's aal2 request asks for a second factor (is at ${page.url()})`);
    await j.visited(page, 'step-up for the app');
    server.mail.markAllRead();
    await leadsToPage(page, () => page.getByRole('button', { name: 'Send the code' }).click());
    const code = await server.mail.oneTimeCode(email);
    const wrong = code === '000000' ? '111111' : '000000';

    // One mistyped code: the page again, with the error.
    await page.locator('#code').fill(wrong);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm' }).click());
    assert.equal(path(page), '/step-up', 'the wrong code shows the step-up page again');
    assert.match(await page.locator('main').textContent(), /code/i);
    // The wrong code's page answers 401, which the browser logs as a failed load.
    await j.screenshots(page, 'step-up, wrong code');
    page.problems.length = 0;

    // The right code: through /oauth2/authorize and back to the app (Chrome applies
    // form-action to that redirect chain).
    await page.locator('#code').fill(code);
    const landed = page
      .waitForURL((u) => u.origin === rp.url, { timeout: 15_000, waitUntil: 'load' })
      .then(() => true, () => false);
    await page.getByRole('button', { name: 'Confirm' }).click();
    assert.ok(
      await landed,
      appFailure(`the right code did not lead to the app: at ${page.url()}; CSP ${JSON.stringify(violations)}`),
    );
    await page.waitForLoadState('load');
    const home = await page.locator('body').textContent();
    assert.ok(home.includes(`Signed in as ${email}`), appFailure(`the app says who is signed in: ${home}`));
    assert.match(home, /Assurance: urn:gatehouse:aal2/, 'the app got the second factor it asked for');
    assert.deepEqual(violations, [], 'no securitypolicyviolation from /step-up to the app');
  });
});

checkVisitedPages(journeys, 'Gatehouse page');
