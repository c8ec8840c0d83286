// Starts the real Gatehouse binary (target/debug/gatehouse) in dev mode on a free
// loopback port, against a fresh PostgreSQL database of its own, with mail written
// as .eml files to a temporary folder. One server per journey; stop() drops it all.
import { spawn, execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { X509Certificate, createHash, randomBytes } from 'node:crypto';
import { request as httpsRequest } from 'node:https';

const run = promisify(execFile);
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BINARY = process.env.GATEHOUSE_BIN || join(REPO, 'target', 'debug', 'gatehouse');
// The admin connection used to create and drop each journey's database.
const ADMIN_URL = process.env.GATEHOUSE_TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';

/** A port nobody listens on right now, on loopback. */
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

async function psql(sql) {
  try {
    await run('psql', [ADMIN_URL, '-v', 'ON_ERROR_STOP=1', '-qtAc', sql]);
  } catch (e) {
    throw new Error(
      `psql failed (is PostgreSQL listening as ${ADMIN_URL}? set GATEHOUSE_TEST_DATABASE_URL): ${e.stderr || e.message}`,
    );
  }
}

function dbUrl(name) {
  const u = new URL(ADMIN_URL);
  u.pathname = '/' + name;
  return u.toString();
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The test certificate for localhost / 127.0.0.1 (tests/fixtures/tls/README.md says
// how it was made). Never for production: its key is in the repository.
export const TLS_CERT = join(REPO, 'tests', 'fixtures', 'tls', 'localhost.crt');
export const TLS_KEY = join(REPO, 'tests', 'fixtures', 'tls', 'localhost.key');

/**
 * The base64 SHA-256 of the test certificate's SubjectPublicKeyInfo: what Chromium's
 * `--ignore-certificate-errors-spki-list` takes to trust it.
 */
export function tlsSpki() {
  const spki = new X509Certificate(readFileSync(TLS_CERT)).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(spki).digest('base64');
}

/** The status of a GET over HTTPS to 127.0.0.1, trusting only the test certificate. */
function httpsStatus(port, path) {
  return new Promise((ok, fail) => {
    const req = httpsRequest(
      { host: '127.0.0.1', port, path, servername: 'localhost', ca: readFileSync(TLS_CERT), timeout: 2000 },
      (res) => {
        res.resume();
        ok(res.statusCode);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', fail);
    req.end();
  });
}

/**
 * `host` names the server in GATEHOUSE_PUBLIC_URL (and `base`, the address browsers
 * open); it still listens on 127.0.0.1 only. The default, the IP address, leaves
 * passkeys off: WebAuthn refuses an IP address as relying-party id, so journeys with
 * passkeys pass `{ host: 'localhost' }` (a secure context over plain http).
 * `https: true` makes Gatehouse serve HTTPS itself with the test certificate
 * (GATEHOUSE_TLS_CERT / GATEHOUSE_TLS_KEY) and an https:// public URL, so its
 * cookies are the production ones (`__Host-`, `Secure`); `env` adds settings.
 */
export async function startServer({ host = '127.0.0.1', https = false, env: extra = {} } = {}) {
  if (!existsSync(BINARY)) {
    throw new Error(
      `Gatehouse binary not found at ${BINARY}: build it first (\`cargo build\`, or \`scripts/test\`, which runs cargo test before this suite)`,
    );
  }
  const port = await freePort();
  const db = 'gatehouse_browser_' + randomBytes(6).toString('hex');
  await psql(`CREATE DATABASE ${db}`);
  const mailDir = mkdtempSync(join(tmpdir(), 'gatehouse-mail-'));
  const base = `${https ? 'https' : 'http'}://${host}:${port}`;
  const env = {
    ...process.env,
    GATEHOUSE_DEV: 'true',
    GATEHOUSE_BIND: `127.0.0.1:${port}`,
    GATEHOUSE_PUBLIC_URL: base,
    GATEHOUSE_DATABASE_URL: dbUrl(db),
    GATEHOUSE_MAIL_DIR: mailDir,
    GATEHOUSE_REQUIRE_VERIFIED_EMAIL: 'true',
    NO_COLOR: '1',
    ...(https ? { GATEHOUSE_TLS_CERT: TLS_CERT, GATEHOUSE_TLS_KEY: TLS_KEY } : {}),
    ...extra,
  };
  let log = '';
  const child = spawn(BINARY, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));

  const server = {
    base,
    port,
    db,
    env,
    mail: new Mailbox(mailDir),
    log: () => log,
    async stop() {
      if (exited === null) {
        child.kill('SIGTERM');
        for (let i = 0; i < 50 && exited === null; i++) await sleep(100);
        if (exited === null) child.kill('SIGKILL');
        for (let i = 0; i < 20 && exited === null; i++) await sleep(100);
      }
      rmSync(mailDir, { recursive: true, force: true });
      await psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    },
    /** One SQL query against this server's database; its rows, `|`-separated. */
    async sql(query) {
      const { stdout } = await run('psql', [dbUrl(db), '-v', 'ON_ERROR_STOP=1', '-qtAc', query]);
      return stdout.trim();
    },
    /** Runs another `gatehouse` command against this server's database. */
    async cli(args, input) {
      return new Promise((ok, fail) => {
        const p = spawn(BINARY, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        p.stdout.on('data', (d) => (out += d));
        p.stderr.on('data', (d) => (err += d));
        p.on('exit', (code) =>
          code === 0 ? ok(out) : fail(new Error(`gatehouse ${args.join(' ')} exited ${code}: ${err}`)),
        );
        p.stdin.end(input ?? '');
      });
    },
  };

  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited !== null) {
      await server.stop().catch(() => {});
      throw new Error(`gatehouse serve exited (${JSON.stringify(exited)}) before it was ready:\n${log}`);
    }
    try {
      // By address: `localhost` may resolve to ::1 first, where nothing listens.
      const status = https ? await httpsStatus(port, '/readyz') : (await fetch(`http://127.0.0.1:${port}/readyz`)).status;
      if (status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await server.stop().catch(() => {});
      throw new Error(`gatehouse serve was not ready within 60 s:\n${log}`);
    }
    await sleep(100);
  }
  return server;
}

/** Undoes quoted-printable: soft line breaks and =XX escapes (UTF-8 aware). */
export function decodeQuotedPrintable(text) {
  const joined = text.replace(/=\r?\n/g, '');
  const bytes = [];
  for (let i = 0; i < joined.length; i++) {
    const c = joined[i];
    if (c === '=' && /^[0-9A-F]{2}$/i.test(joined.slice(i + 1, i + 3))) {
      bytes.push(parseInt(joined.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(...Buffer.from(c, 'utf8'));
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/** The folder dev mode writes mail to: one .eml file per message. */
export class Mailbox {
  constructor(dir) {
    this.dir = dir;
    this.seen = new Set();
  }

  files() {
    return readdirSync(this.dir)
      .filter((f) => f.endsWith('.eml'))
      .map((f) => ({ f, t: statSync(join(this.dir, f)).mtimeMs }))
      .sort((a, b) => a.t - b.t || a.f.localeCompare(b.f))
      .map((x) => x.f);
  }

  /** Marks every message so far as read, so the next wait sees only newer ones. */
  markAllRead() {
    for (const f of this.files()) this.seen.add(f);
  }

  /**
   * Waits for the newest unread message to `to` whose decoded text matches `pattern`;
   * returns the first capture group (or the whole match).
   */
  async waitFor(to, pattern, { timeout = 15_000 } = {}) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const fresh = this.files().filter((f) => !this.seen.has(f)).reverse();
      for (const f of fresh) {
        const raw = readFileSync(join(this.dir, f), 'utf8');
        const text = decodeQuotedPrintable(raw);
        if (!text.toLowerCase().includes(to.toLowerCase())) continue;
        const m = text.match(pattern);
        if (m) {
          this.markAllRead();
          return m[1] ?? m[0];
        }
      }
      if (Date.now() > deadline) {
        throw new Error(`no mail to ${to} matching ${pattern} within ${timeout} ms in ${this.dir} (${this.files().join(', ')})`);
      }
      await sleep(100);
    }
  }

  /** The link of a verification mail, as a path on the server. */
  async verificationLink(to) {
    const url = await this.waitFor(to, /(https?:\/\/[^\s"<>]*\/verify-email\?token=[A-Za-z0-9_\-%.]+)/);
    return new URL(url).pathname + new URL(url).search;
  }

  async oneTimeCode(to) {
    return this.waitFor(to, /Your one-time code is (\d{6})\./);
  }
}
