// Progressive enhancement, both ways: every page works with JavaScript turned off,
// and where it runs, static/js/gatehouse.js (loaded under the page's CSP nonce) adds
// copy buttons for the TOTP key and the recovery codes and keeps the device list's
// "last active" times current.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Journey, launchBrowser } from './lib/browser.mjs';
import { startServer } from './lib/server.mjs';
import { createVerifiedUser, heading, leadsToPage, newAccount, path, signIn } from './lib/steps.mjs';
import { base32Decode, currentStep, totpAt } from './lib/totp.mjs';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

test('without JavaScript: register, confirm, sign in, see the devices, sign out', async () => {
  const server = await startServer();
  const context = await browser.newContext({ baseURL: server.base, javaScriptEnabled: false });
  try {
    const page = await context.newPage();
    const { email, password } = newAccount();
    await page.goto('/register');
    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Create account' }).click());
    assert.equal(await heading(page), 'Check your inbox');

    await page.goto(await server.mail.verificationLink(email));
    await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm my address' }).click());
    assert.equal(await heading(page), 'Address confirmed');

    await page.goto('/login');
    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in' }).click());
    assert.equal(path(page), '/account');

    await page.goto('/account/devices');
    assert.equal(await heading(page), "Where you're signed in");
    assert.equal(await page.locator('li.device').count(), 1);

    await leadsToPage(page, () => page.locator('header').getByRole('button', { name: 'Sign out' }).click());
    assert.equal(path(page), '/login');
    await page.goto('/account');
    assert.equal(path(page), '/login', 'signed out');
  } finally {
    await context.close();
    await server.stop();
  }
});

test('with JavaScript: copy buttons for the key and the recovery codes, live times', async () => {
  const server = await startServer();
  const j = new Journey(browser, 'enhancement', server.base);
  try {
    const { email, password } = await createVerifiedUser(server);
    const page = await j.newPage();
    await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.base });
    await signIn({ page, j, server, email, password });

    // A second browser, so the device list has a row whose time the script keeps.
    const other = await j.newPage();
    await signIn({ page: other, j, server, email, password });
    await page.goto('/account/devices');
    await j.visited(page, 'devices with script');
    const time = page.locator('li.device time[data-relative]').first();
    assert.match(await time.textContent(), /just now|minute/);
    assert.ok((await time.getAttribute('title'))?.length > 0, 'the local time is on hover');

    // Step up by mail, then start enrolling.
    await page.goto('/account/mfa');
    await leadsToPage(page, () => page.getByRole('link', { name: 'Set up an authenticator app' }).click());
    server.mail.markAllRead();
    await leadsToPage(page, () => page.getByRole('button', { name: 'Send the code' }).click());
    await page.locator('#code').fill(await server.mail.oneTimeCode(email));
    await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm' }).click());
    await leadsToPage(page, () => page.getByRole('button', { name: 'Set up an authenticator app' }).click());
    await page.getByText("Can't scan it? Enter the key by hand").click();
    await j.visited(page, 'enrol with script');
    const shown = (await page.locator('code.secret').textContent()).trim();
    await page.getByRole('button', { name: 'Copy key' }).click();
    await page.getByRole('status').filter({ hasText: 'Copied' }).waitFor();
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    assert.equal(copied, shown.replace(/ /g, ''), 'the key, without the spaces it is shown with');

    const secret = base32Decode(shown);
    await page.getByLabel('Code from the app').fill(totpAt(secret, currentStep()));
    await leadsToPage(page, () => page.getByRole('button', { name: 'Turn on two-step verification' }).click());
    await j.visited(page, 'recovery codes with script');
    const codes = (await page.locator('ol.codes li').allTextContents()).map((c) => c.trim());
    assert.equal(codes.length, 10);
    await page.getByRole('button', { name: 'Copy all codes' }).click();
    await page.getByRole('status').filter({ hasText: 'Copied' }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), `${codes.join('\n')}\n`);
    await j.finish();
    assert.deepEqual(j.a11y, [], `axe-core (serious/critical):\n${j.a11yReport?.() ?? ''}`);
  } finally {
    await server.stop();
  }
});
