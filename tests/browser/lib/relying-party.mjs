// The example relying party (examples/relying-party/, built by `cargo test` as
// target/debug/examples/relying-party), registered as a client of one journey's
// Gatehouse with `gatehouse client create` and started on a free loopback port.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, freePort, sleep } from './server.mjs';

export const RP_BINARY = process.env.GATEHOUSE_RP_BIN || join(REPO, 'target', 'debug', 'examples', 'relying-party');

/**
 * Registers the example app with `server` (not first-party, so the consent page is
 * shown) and starts it. Returns { url, clientId, log(), stop() }.
 */
export async function startRelyingParty(server) {
  if (!existsSync(RP_BINARY)) {
    throw new Error(
      `example app binary not found at ${RP_BINARY}: build it first (\`cargo test\` or \`cargo build --examples\`; scripts/test runs cargo test before this suite)`,
    );
  }
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const out = await server.cli([
    'client', 'create',
    '--name', 'Example app',
    '--redirect-uri', `${url}/callback`,
    '--backchannel-logout-uri', `${url}/backchannel-logout`,
  ]);
  const line = out.split('\n').reverse().find((l) => l.trim().startsWith('{'));
  let created;
  try {
    created = JSON.parse(line);
  } catch {
    throw new Error(`gatehouse client create printed no JSON: ${out}`);
  }
  const { client_id: clientId, client_secret: clientSecret } = created;
  if (!clientId || !clientSecret) throw new Error(`gatehouse client create gave no id or secret: ${out}`);

  const env = {
    ...process.env,
    RP_CLIENT_ID: clientId,
    RP_CLIENT_SECRET: clientSecret,
    GATEHOUSE_URL: server.base,
    RP_BIND: `127.0.0.1:${port}`,
    RP_URL: url,
    NO_COLOR: '1',
  };
  let log = '';
  const child = spawn(RP_BINARY, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));

  const rp = {
    url,
    clientId,
    log: () => log,
    async stop() {
      if (exited !== null) return;
      child.kill('SIGTERM');
      for (let i = 0; i < 30 && exited === null; i++) await sleep(100);
      if (exited === null) child.kill('SIGKILL');
      for (let i = 0; i < 20 && exited === null; i++) await sleep(100);
    },
  };

  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited !== null) throw new Error(`the example app exited (${JSON.stringify(exited)}) before it was ready:\n${log}`);
    try {
      const res = await fetch(`${url}/`);
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await rp.stop();
      throw new Error(`the example app was not ready within 30 s:\n${log}`);
    }
    await sleep(100);
  }
  return rp;
}
