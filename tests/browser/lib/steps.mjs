// The steps journeys are made of: filling the sign-in and registration forms,
// answering /login/verify, moving by keyboard.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

export function newAccount() {
  const id = randomBytes(4).toString('hex');
  return { email: `walker-${id}@example.test`, password: `lantern harbour ${id} quietly` };
}

/** Does `action` (a click, a key press) and waits for the page it leads to. */
export async function leadsToPage(page, action) {
  const navigated = page.waitForEvent('framenavigated', { predicate: (f) => f === page.mainFrame() });
  await action();
  await navigated;
  await page.waitForLoadState('load');
}

export const path = (page) => new URL(page.url()).pathname;

export async function heading(page) {
  return (await page.locator('main h1').first().textContent()).trim();
}

export async function createVerifiedUser(server) {
  const a = newAccount();
  await server.cli(['user', 'create', '--email', a.email, '--verified'], `${a.password}\n`);
  return a;
}

/**
 * Answers /login/verify when it appears: with an authenticator code when `totp` is
 * given, otherwise with the e-mailed code (asking for it first if needed).
 */
export async function answerSecondFactor({ page, j, server, email, totp, keyboard = false }) {
  if (path(page) !== '/login/verify') return;
  await j.visited(page, 'second factor');
  let code;
  if (totp) {
    code = totp();
  } else {
    const send = page.getByRole('button', { name: 'Send the code' });
    if (await send.count()) {
      server.mail.markAllRead();
      if (keyboard) {
        await tabTo(page, 'Send the code');
        await leadsToPage(page, () => page.keyboard.press('Enter'));
      } else {
        await leadsToPage(page, () => send.click());
      }
      await j.visited(page, 'second factor, code sent');
    }
    code = await server.mail.oneTimeCode(email);
  }
  const field = page.locator('#code');
  if (keyboard) {
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'code', 'the code field has the focus');
    await page.keyboard.type(code);
    await leadsToPage(page, () => page.keyboard.press('Enter'));
  } else {
    await field.fill(code);
    await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in', exact: true }).click());
  }
}

export async function signIn({ page, j, server, email, password, totp }) {
  await page.goto('/login');
  await j.visited(page, 'sign in');
  await page.getByLabel('E-mail address').fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  await leadsToPage(page, () => page.getByRole('button', { name: 'Sign in', exact: true }).click());
  await answerSecondFactor({ page, j, server, email, totp });
  assert.equal(path(page), '/account', `signed in at /account (is at ${page.url()}: ${await heading(page)})`);
  await j.visited(page, 'account');
}

export async function signOut(page, j) {
  await leadsToPage(page, () => page.locator('header').getByRole('button', { name: 'Sign out' }).click());
  assert.equal(path(page), '/login');
  await j.visited(page, 'signed out');
}

export async function assertSessionCookies(page) {
  const names = (await page.context().cookies()).map((c) => c.name);
  assert.ok(names.includes('gatehouse_session'), `signed in with a gatehouse_session cookie (have ${names})`);
  assert.ok(names.includes('gatehouse_device'), `a gatehouse_device cookie (have ${names})`);
}

/** Presses Tab until the focused element is `name` (its text, value or label). */
export async function tabTo(page, name, max = 20) {
  const seen = [];
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    const f = await page.evaluate(() => {
      const a = document.activeElement;
      const style = getComputedStyle(a);
      return {
        name: (a.labels?.[0]?.innerText || a.innerText || a.value || a.tagName).trim(),
        ring: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0 || style.boxShadow !== 'none',
      };
    });
    seen.push(f.name);
    if (f.name === name) {
      assert.ok(f.ring, `focus on "${name}" is visible (outline or box-shadow)`);
      return;
    }
  }
  throw new Error(`Tab never reached "${name}" in ${max} presses: ${seen.join(' → ')}`);
}

export async function focusedId(page) {
  return page.evaluate(() => document.activeElement?.id);
}
