// Debian's Chromium (/usr/bin/chromium) driven by playwright-core, never a downloaded
// browser, and the checks every visited page gets: no CSP violation, no console
// error, no failed subresource, session cookies out of reach of scripts, screenshots
// at two widths in light and dark, and an axe-core accessibility scan.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { REPO } from './server.mjs';

const require = createRequire(import.meta.url);
const AXE_SOURCE = require('axe-core').source;

export const CHROMIUM = process.env.GATEHOUSE_CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];
export const SCREENSHOTS = join(REPO, 'target', 'screenshots');
// Cookies that must never be readable from page scripts (dev-mode names over http,
// and the `__Host-` ones over https).
const SECRET_COOKIES = ['gatehouse_session', 'gatehouse_device', 'gatehouse_pending', 'gatehouse_presession', 'gatehouse_bound']
  .flatMap((name) => [name, `__Host-${name}`]);
const SHOTS = [
  { width: 1280, height: 800, colorScheme: 'light' },
  { width: 1280, height: 800, colorScheme: 'dark' },
  { width: 375, height: 740, colorScheme: 'light' },
  { width: 375, height: 740, colorScheme: 'dark' },
];

/**
 * Launches Chromium. A missing browser is a failure, never a skip. Each launch gets
 * a fresh profile (`--user-data-dir`): a persistent context needs one page set per
 * browser, so for several contexts the suite relies on playwright's launch(), which
 * passes a new temporary `--user-data-dir` itself (it refuses one in `args`).
 */
export async function launchBrowser({ args = [] } = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install Debian's package (apt-get install -y chromium); scripts/test does`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: [...CHROMIUM_ARGS, ...args],
  });
}

/**
 * Chromium's flags for Device Bound Session Credentials on Linux, where it has no
 * TPM: software keys, no refresh quota (otherwise 6 signatures per 9 minutes), and
 * trust in the certificate whose SubjectPublicKeyInfo hashes to `spki` (base64
 * SHA-256). DBSC needs HTTPS with a certificate the browser trusts: over plain
 * http://localhost, with `--ignore-certificate-errors` or playwright's
 * `ignoreHTTPSErrors` it ignores `Secure-Session-Registration` without a word. The
 * SPKI list is honoured only with a `--user-data-dir`, which playwright's launch()
 * passes.
 */
export function dbscArgs(spki) {
  return [
    '--enable-features=DeviceBoundSessions:RefreshQuota/false,EnableBoundSessionCredentialsSoftwareKeysForManualTesting',
    `--ignore-certificate-errors-spki-list=${spki}`,
  ];
}

function slug(s) {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

/**
 * One journey's browser contexts and what it saw: every page visited is checked by
 * `visited(page, label)`; axe findings are kept in `a11y` for a separate assertion.
 */
export class Journey {
  constructor(browser, name, base) {
    this.browser = browser;
    this.name = slug(name);
    this.base = base;
    this.step = 0;
    this.a11y = [];
    this.a11yAll = [];
    this.iconProblems = new Set();
    this.pagesVisited = [];
    this.pages = [];
    mkdirSync(join(SCREENSHOTS, this.name), { recursive: true });
  }

  async newPage() {
    const context = await this.browser.newContext({
      baseURL: this.base,
      viewport: { width: 1280, height: 800 },
      colorScheme: 'light',
      locale: 'en-GB',
      timezoneId: 'Europe/London',
    });
    // Installed before any page script runs, on every document of this context.
    await context.addInitScript(() => {
      window.__cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.__cspViolations.push({
          directive: e.violatedDirective,
          effective: e.effectiveDirective,
          blocked: e.blockedURI,
          source: `${e.sourceFile}:${e.lineNumber}:${e.columnNumber}`,
          sample: e.sample,
        });
      });
    });
    const page = await context.newPage();
    this.pages.push(page);
    page.problems = [];
    // Chromium asks every site for /favicon.ico on its own, at a moment unrelated to
    // the page checks; its failure is kept apart (see `iconProblems`) so it is reported
    // once by a test of its own instead of being blamed on whichever page was shown.
    const isIcon = (url) => new URL(url).pathname === '/favicon.ico';
    page.on('console', (msg) => {
      if (msg.type() === 'error' && isIcon(msg.location().url || 'http://x/')) return this.iconProblems.add(msg.text());
      if (msg.type() === 'error') page.problems.push(`console error: ${msg.text()} (${msg.location().url})`);
    });
    page.on('pageerror', (err) => page.problems.push(`uncaught exception: ${err.message}`));
    page.on('requestfailed', (req) => {
      if (isIcon(req.url())) return this.iconProblems.add(`GET /favicon.ico failed: ${req.failure()?.errorText}`);
      // A navigation replaced by the next one is aborted on purpose.
      if (req.resourceType() === 'document' && req.failure()?.errorText === 'net::ERR_ABORTED') return;
      page.problems.push(`request failed: ${req.resourceType()} ${req.url()} ${req.failure()?.errorText}`);
    });
    page.on('response', (res) => {
      const type = res.request().resourceType();
      if (isIcon(res.url()) && res.status() >= 400) return this.iconProblems.add(`GET /favicon.ico answered ${res.status()}`);
      if (type !== 'document' && res.status() >= 400) {
        page.problems.push(`subresource answered ${res.status()}: ${type} ${res.url()}`);
      }
    });
    return page;
  }

  /**
   * The checks once more on every page still open, at the end of a journey: what
   * happened after a page's last check (a click that ran a script, say) counts too.
   */
  async finish() {
    for (const page of this.pages) {
      if (page.isClosed()) continue;
      const where = `${this.name}, after the last check (${new URL(page.url()).pathname})`;
      assert.deepEqual(page.problems, [], `${where}: console errors or failed subresource requests`);
      const csp = await page.evaluate(() => window.__cspViolations ?? []);
      assert.deepEqual(csp, [], `${where}: Content-Security-Policy violations`);
    }
  }

  /** Every check on the page now shown; call it after each navigation. */
  async visited(page, label) {
    await page.waitForLoadState('load');
    const where = `${label} (${new URL(page.url()).pathname})`;
    this.pagesVisited.push(where);

    const csp = await page.evaluate(() => window.__cspViolations);
    assert.ok(Array.isArray(csp), `${where}: the securitypolicyviolation listener was not installed`);
    assert.deepEqual(csp, [], `${where}: Content-Security-Policy violations`);

    assert.deepEqual(page.problems, [], `${where}: console errors or failed subresource requests`);

    const visible = await page.evaluate(() => document.cookie);
    for (const name of SECRET_COOKIES) {
      assert.ok(!visible.split(/;\s*/).some((c) => c.startsWith(name + '=')), `${where}: ${name} is readable by document.cookie`);
    }
    for (const c of await page.context().cookies()) {
      if (SECRET_COOKIES.includes(c.name)) assert.ok(c.httpOnly, `${where}: cookie ${c.name} lacks HttpOnly`);
      // Gatehouse sets no cookie a page script may read.
      if (new URL(page.url()).origin === new URL(this.base).origin) assert.ok(c.httpOnly, `${where}: cookie ${c.name} lacks HttpOnly`);
    }

    // Without a declared icon Chromium falls back to /favicon.ico; ask for it as it
    // does, since its own request is not always seen before the page is done with.
    const icon = await page.evaluate(() => document.querySelector('link[rel~="icon"]')?.href ?? null);
    const iconUrl = icon ?? new URL('/favicon.ico', page.url()).toString();
    if (!icon || !icon.startsWith('data:')) {
      const res = await page.request.get(iconUrl, { failOnStatusCode: false });
      if (res.status() >= 400) this.iconProblems.add(`GET ${new URL(iconUrl).pathname} answered ${res.status()} (no <link rel="icon"> on the page: ${!icon})`);
    }

    await this.screenshots(page, label);
    await this.axe(page, where);
    page.problems.length = 0;
  }

  async screenshots(page, label) {
    this.step += 1;
    const original = page.viewportSize();
    const stem = `${String(this.step).padStart(2, '0')}-${slug(label)}`;
    for (const s of SHOTS) {
      await page.setViewportSize({ width: s.width, height: s.height });
      await page.emulateMedia({ colorScheme: s.colorScheme });
      await page.screenshot({
        path: join(SCREENSHOTS, this.name, `${stem}-${s.width}-${s.colorScheme}.png`),
        fullPage: true,
        animations: 'disabled',
      });
    }
    await page.setViewportSize(original);
    await page.emulateMedia({ colorScheme: 'light' });
  }

  async axe(page, where) {
    // Injected through the DevTools protocol (page.evaluate of the source text), which
    // the page's CSP does not govern, as an extension's content script would be.
    if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(AXE_SOURCE);
    for (const scheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme: scheme });
      const found = await page.evaluate(async () => {
        const r = await window.axe.run(document, { resultTypes: ['violations'] });
        return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')) }));
      });
      for (const v of found) {
        this.a11yAll.push({ page: where, scheme, ...v });
        if (v.impact === 'serious' || v.impact === 'critical') this.a11y.push({ page: where, scheme, ...v });
      }
      writeFileSync(join(SCREENSHOTS, this.name, 'axe-violations.json'), JSON.stringify(this.a11yAll, null, 2));
    }
    await page.emulateMedia({ colorScheme: 'light' });
    // Nothing axe did may be blamed on the next step on this page.
    await page.evaluate(() => (window.__cspViolations = []));
  }

  /** The accessibility findings as one readable message. */
  a11yReport() {
    const seen = new Set();
    const lines = [];
    for (const v of this.a11y) {
      const key = `${v.page}|${v.scheme}|${v.id}`;
      if (seen.has(key)) continue;
      seen.add(key);
      lines.push(`  ${v.impact} ${v.id} on ${v.page} [${v.scheme}]: ${v.help} — ${v.targets.join(', ')}`);
    }
    return lines.join('\n');
  }
}

/**
 * The suite-wide checks over every page the `journeys` of a test file visited: no
 * failed /favicon.ico request (Chromium asks every site whose pages name no icon, and
 * a 404 there is a failed request and a console error on every visit) and no axe-core
 * violation of impact "serious" or "critical", in light or dark. Registered as tests of
 * their own, after the journeys, so a finding names its rule and page without hiding
 * the journeys' own results. `pages` names what was visited ("page", "Gatehouse page").
 */
export function checkVisitedPages(journeys, pages = 'page') {
  test(`no failed /favicon.ico request on any visited ${pages}`, () => {
    assert.ok(journeys.length > 0, 'the journeys ran');
    const problems = [...new Set(journeys.flatMap((j) => [...j.iconProblems]))];
    assert.deepEqual(problems, [], 'pages need an icon: give base.html a <link rel="icon"> (data: URLs are allowed by img-src) or serve /favicon.ico');
  });

  test(`accessibility: no serious or critical axe-core violation on any visited ${pages}`, () => {
    assert.ok(journeys.length > 0, 'the journeys ran');
    const report = journeys
      .filter((j) => j.a11y.length)
      .map((j) => `${j.name}:\n${j.a11yReport()}`)
      .join('\n');
    assert.equal(report, '', `axe-core violations (serious/critical):\n${report}`);
  });
}
