// Real-browser journeys through Gatehouse's pages. Each journey gets a
// server of its own (fresh database, fresh mail folder); one Chromium serves all.
// Every page visited is checked (CSP, console, subresources, cookies), screenshotted
// into target/screenshots/<journey>/ and scanned with axe-core.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Journey, launchBrowser, checkVisitedPages } from './lib/browser.mjs';
import { startServer } from './lib/server.mjs';
import {
  answerSecondFactor,
  assertSessionCookies,
  createVerifiedUser,
  focusedId,
  heading,
  leadsToPage,
  newAccount,
  path,
  signIn,
  signOut,
  tabTo,
} from './lib/steps.mjs';
import { base32Decode, currentStep, totpAt } from './lib/totp.mjs';

let browser;
const journeys = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** Runs a journey against a server of its own; its log is shown when it fails. */
async function journey(name, body) {
  const server = await startServer();
  const j = new Journey(browser, name, server.base);
  journeys.push(j);
  const contexts = [];
  const newPage = async () => {
    const page = await j.newPage();
    contexts.push(page.context());
    return page;
  };
  try {
    await body({ server, j, newPage });
    await j.finish();
  } catch (e) {
    const tail = server.log().split('\n').slice(-40).join('\n');
    e.message += `\n--- pages visited: ${j.pagesVisited.join(' → ')}\n--- last server log lines:\n${tail}`;
    throw e;
  } finally {
    for (const c of contexts) await c.close().catch(() => {});
    await server.stop();
  }
}

test('register, verify by mail, sign in, see the account', async () => {
  await journey('register-verify-sign-in', async ({ server, j, newPage }) => {
    const { email, password } = newAccount();
    const page = await newPage();

    await page.goto('/register');
    await j.visited(page, 'register');
    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Create account' }).click());
    assert.equal(await heading(page), 'Check your inbox');
    await j.visited(page, 'check your inbox');

    const link = await server.mail.verificationLink(email);
    await page.goto(link);
    assert.equal(await heading(page), 'Confirm your e-mail address');
    await j.visited(page, 'confirm address');
    await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm my address' }).click());
    assert.equal(await heading(page), 'Address confirmed');
    await j.visited(page, 'address confirmed');

    await leadsToPage(page, () => page.getByRole('link', { name: 'Sign in' }).click());
    assert.equal(path(page), '/login');
    await page.getByLabel('E-mail address').fill(email);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in' }).click());
    await answerSecondFactor({ page, j, server, email });
    assert.equal(path(page), '/account');
    assert.equal(await heading(page), 'Your account');
    assert.match(await page.locator('main').textContent(), new RegExp(email.replace(/[.]/g, '\\.')));
    await assertSessionCookies(page);
    await j.visited(page, 'account');
  });
});

test('sign in from two browsers, revoke the other from the device list', async () => {
  await journey('revoke-other-device', async ({ server, j, newPage }) => {
    const { email, password } = await createVerifiedUser(server);
    const mine = await newPage();
    const other = await newPage();
    await signIn({ page: other, j, server, email, password });
    await signIn({ page: mine, j, server, email, password });
    await assertSessionCookies(other);

    await mine.goto('/account/devices');
    await j.visited(mine, 'devices, two');
    const devices = mine.locator('li.device');
    assert.equal(await devices.count(), 2, 'both browsers are listed');
    const otherRow = mine.locator('li.device:not(.current)');
    assert.equal(await otherRow.count(), 1);
    await leadsToPage(mine, () => otherRow.getByRole('button', { name: 'Revoke' }).click());
    assert.equal(path(mine), '/account/devices');
    await j.visited(mine, 'devices, revoked');
    assert.equal(await mine.locator('li.device').count(), 1, 'one device left');
    assert.equal(await mine.locator('li.device.current').count(), 1, 'the one left is this one');

    // The revoked browser is signed out on its very next request.
    await other.goto('/account');
    assert.equal(path(other), '/login', `the revoked browser was sent to sign in (is at ${other.url()})`);
    await j.visited(other, 'revoked browser');

    // And this one is still signed in.
    await mine.goto('/account');
    assert.equal(path(mine), '/account');
  });
});

test('turn on an authenticator app after a mailed step-up, then sign in with it', async () => {
  await journey('totp-enrol-and-sign-in', async ({ server, j, newPage }) => {
    const { email, password } = await createVerifiedUser(server);
    const page = await newPage();
    await signIn({ page, j, server, email, password });

    await page.goto('/account/mfa');
    await j.visited(page, 'security, off');
    await leadsToPage(page, () => page.getByRole('link', { name: 'Set up an authenticator app' }).click());
    assert.equal(path(page), '/step-up');
    await j.visited(page, 'step-up');
    server.mail.markAllRead();
    await leadsToPage(page, () => page.getByRole('button', { name: 'Send the code' }).click());
    await j.visited(page, 'step-up, code sent');
    const mailed = await server.mail.oneTimeCode(email);
    await page.locator('#code').fill(mailed);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Confirm' }).click());
    assert.equal(path(page), '/account/mfa', `back at /account/mfa after step-up (is at ${page.url()})`);
    await j.visited(page, 'security, fresh');

    await leadsToPage(page, () => page.getByRole('button', { name: 'Set up an authenticator app' }).click());
    await page.getByText("Can't scan it? Enter the key by hand").click();
    const shown = (await page.locator('code.secret').textContent()).trim();
    assert.match(shown, /^[A-Z2-7]{4}( [A-Z2-7]{1,4})+$/, 'the key is shown in groups');
    await j.visited(page, 'security, enrol');
    const secret = base32Decode(shown);
    let lastStep = currentStep();
    await page.getByLabel('Code from the app').fill(totpAt(secret, lastStep));
    await leadsToPage(page, () => page.getByRole('button', { name: 'Turn on two-step verification' }).click());
    assert.equal(await page.locator('#codes-title').textContent(), 'Your recovery codes');
    assert.equal(await page.locator('ol.codes li').count(), 10, 'ten recovery codes');
    await j.visited(page, 'recovery codes');
    await leadsToPage(page, () => page.getByRole('link', { name: 'I have saved them' }).click());
    assert.match(await page.locator('main').textContent(), /On since/);
    await j.visited(page, 'security, on');

    await signOut(page, j);
    // A step already used cannot be used again; the server allows one step of skew.
    const totp = () => totpAt(secret, Math.max(currentStep(), lastStep + 1));
    await signIn({ page, j, server, email, password, totp });
    assert.match(await page.locator('main').textContent(), /Two-step verification\s*On/);
  });
});

test('register and sign in with the keyboard alone', async () => {
  await journey('keyboard-only', async ({ server, j, newPage }) => {
    const { email, password } = newAccount();
    const page = await newPage();

    await page.goto('/register');
    await j.visited(page, 'register');
    assert.equal(await focusedId(page), 'email', 'the e-mail field starts with the focus');
    await page.keyboard.type(email);
    await tabTo(page, 'Password');
    await page.keyboard.type(password);
    await tabTo(page, 'Create account');
    await leadsToPage(page, () => page.keyboard.press('Enter'));
    assert.equal(await heading(page), 'Check your inbox');
    await j.visited(page, 'check your inbox');

    await page.goto(await server.mail.verificationLink(email));
    await j.visited(page, 'confirm address');
    await tabTo(page, 'Confirm my address');
    await leadsToPage(page, () => page.keyboard.press('Space'));
    assert.equal(await heading(page), 'Address confirmed');
    await j.visited(page, 'address confirmed');
    await tabTo(page, 'Sign in');
    await leadsToPage(page, () => page.keyboard.press('Enter'));
    assert.equal(path(page), '/login');
    await j.visited(page, 'sign in');

    assert.equal(await focusedId(page), 'email', 'the e-mail field starts with the focus');
    await page.keyboard.type(email);
    await tabTo(page, 'Password');
    await page.keyboard.type(password);
    await tabTo(page, 'Keep me signed in on this device');
    await page.keyboard.press('Space');
    assert.equal(await page.locator('#remember').isChecked(), true, 'Space ticks the box');
    await tabTo(page, 'Sign in');
    await leadsToPage(page, () => page.keyboard.press('Enter'));
    await answerSecondFactor({ page, j, server, email, keyboard: true });
    assert.equal(path(page), '/account');
    assert.match(await page.locator('main').textContent(), /kept signed in on this device/);
    await j.visited(page, 'account');
  });
});

checkVisitedPages(journeys);
