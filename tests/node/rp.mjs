// A relying party built on panva's openid-client v6: an OpenID Connect client we
// did not write, so it checks Gatehouse against someone else's reading of the specs
// (discovery, RFC 9207 `iss`, PKCE, ID token validation, userinfo, RFC 7662, RFC 7009).
//
//   GH_ISSUER=http://127.0.0.1:PORT GH_COOKIE='name=value; …' GH_REDIRECT=http://127.0.0.1:9/cb \
//   GH_EMAIL=alice@example.com GH_CONF_ID=… GH_CONF_SECRET=… GH_PUB_ID=… node tests/node/rp.mjs
//
// Prints one `ok - …` line per check; on the first failure prints `not ok - …` with the
// error and exits 1. Ends with an `N passed, N failed` line.
import * as client from 'openid-client'

function env(name) {
  const value = process.env[name]
  if (!value) {
    console.log(`not ok - environment variable ${name} is set`)
    console.log('0 passed, 1 failed')
    process.exit(1)
  }
  return value
}

const ISSUER = env('GH_ISSUER')
const COOKIE = env('GH_COOKIE')
const REDIRECT = env('GH_REDIRECT')
const EMAIL = env('GH_EMAIL')

let passed = 0

function ok(what) {
  passed++
  console.log(`ok - ${what}`)
}

// Everything we know about an error: openid-client's errors carry `code`, the
// server's `error`/`error_description` and HTTP `status`, and a `cause` chain that may
// end in the response body (an object), the redirect's parameters or a raw Response.
async function describe(err) {
  const out = []
  for (let e = err, depth = 0; e !== undefined && depth < 5; depth++) {
    if (!(e instanceof Error)) {
      if (e instanceof URLSearchParams) out.push(`cause: ${e}`)
      else if (e instanceof Response) {
        const body = await e.text().catch(() => '(body already read)')
        out.push(`cause: HTTP ${e.status} ${e.url} ${body}`)
      } else out.push(`cause: ${JSON.stringify(e)}`)
      break
    }
    const fields = ['code', 'error', 'error_description', 'status']
      .filter((k) => e[k] !== undefined)
      .map((k) => `${k}=${JSON.stringify(e[k])}`)
    out.push(`${e.name}: ${e.message} ${fields.join(' ')}`.trim())
    e = e.cause
  }
  return out.map((line) => `#   ${line}`).join('\n')
}

async function fail(what, detail) {
  console.log(`not ok - ${what}`)
  if (detail instanceof Error) console.log(await describe(detail))
  else if (detail !== undefined) console.log(`#   got: ${JSON.stringify(detail)}`)
  console.log(`${passed} passed, 1 failed`)
  process.exit(1)
}

async function check(condition, what, got) {
  if (condition) ok(what)
  else await fail(what, got)
}

// Runs one library call; any throw is a failure of that step.
async function step(what, fn) {
  try {
    const result = await fn()
    ok(what)
    return result
  } catch (err) {
    await fail(what, err)
  }
}

// A request the server must refuse with `invalid_grant`; openid-client turns an OAuth
// error body into a ResponseBodyError.
async function expectInvalidGrant(what, fn) {
  try {
    await fn()
  } catch (err) {
    if (err instanceof client.ResponseBodyError && err.error === 'invalid_grant') return ok(what)
    return fail(what, err)
  }
  await fail(what, 'the request succeeded')
}

async function signIn({ label, clientId, secret, reuseOldRefreshToken }) {
  // Plain http on loopback is refused unless allowed; the confidential client sends
  // its secret in the Authorization header, the public one nothing but its id.
  const config = await step(`${label}: discovery from ${ISSUER}`, () =>
    client.discovery(
      new URL(ISSUER),
      clientId,
      secret,
      secret ? client.ClientSecretBasic(secret) : client.None(),
      { execute: [client.allowInsecureRequests] },
    ),
  )

  const verifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const url = client.buildAuthorizationUrl(config, {
    scope: 'openid email offline_access',
    redirect_uri: REDIRECT,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    max_age: '300',
  })

  // The browser is already signed in and the client is first party: no page, just a
  // redirect back with the code. We never follow it (nothing listens there).
  const res = await fetch(url, { headers: { cookie: COOKIE }, redirect: 'manual' })
  const location = res.headers.get('location') ?? ''
  await check(
    (res.status === 302 || res.status === 303) && location.startsWith(REDIRECT),
    `${label}: authorize redirects to the redirect URI`,
    { status: res.status, location, body: res.status >= 400 ? await res.text() : undefined },
  )
  const params = new URL(location).searchParams
  await check(params.get('code') && params.get('iss') === config.serverMetadata().issuer,
    `${label}: the redirect carries a code and iss (RFC 9207)`, Object.fromEntries(params))

  // Checks state, iss, PKCE, the ID token's signature, iss, aud, exp, nonce, auth_time.
  const tokens = await step(`${label}: code exchanged, ID token valid`, () =>
    client.authorizationCodeGrant(config, new URL(location), {
      pkceCodeVerifier: verifier,
      expectedState: state,
      expectedNonce: nonce,
      maxAge: 300,
      idTokenExpected: true,
    }),
  )
  const claims = tokens.claims()
  await check(typeof claims.sub === 'string' && claims.sub && claims.sub !== EMAIL,
    `${label}: sub is an opaque id, not the email`, claims)
  await check(claims.email === EMAIL, `${label}: email claim is the user's`, claims)
  await check(typeof claims.sid === 'string' && claims.sid, `${label}: sid present`, claims)
  const audOk = Array.isArray(claims.aud) ? claims.aud.includes(clientId) : claims.aud === clientId
  await check(audOk && claims.azp === clientId, `${label}: aud and azp are the client`, claims)
  await check(Array.isArray(claims.amr) && claims.amr.includes('pwd'), `${label}: amr has pwd`, claims)
  await check(typeof claims.acr === 'string', `${label}: acr is a string`, claims)
  await check(typeof claims.auth_time === 'number', `${label}: auth_time is a number`, claims)

  // Checks that userinfo's sub is the ID token's.
  const info = await step(`${label}: userinfo`, () =>
    client.fetchUserInfo(config, tokens.access_token, claims.sub))
  await check(info.email === EMAIL, `${label}: userinfo email is the user's`, info)

  if (secret) {
    const intro = await step(`${label}: introspection`, () =>
      client.tokenIntrospection(config, tokens.access_token))
    await check(intro.active === true && intro.sid === claims.sid && intro.client_id === clientId,
      `${label}: access token active, same sid and client`, intro)
  }

  const oldRefresh = tokens.refresh_token
  await check(typeof oldRefresh === 'string' && oldRefresh, `${label}: refresh token issued`, tokens)
  const renewed = await step(`${label}: refresh grant`, () => client.refreshTokenGrant(config, oldRefresh))
  await check(renewed.access_token && renewed.access_token !== tokens.access_token,
    `${label}: new access token`, renewed)
  await check(renewed.refresh_token && renewed.refresh_token !== oldRefresh,
    `${label}: refresh token rotated`, renewed)

  if (reuseOldRefreshToken) {
    // Replaying a rotated token is theft by the server's rules: refused, and the
    // whole family (the token just issued too) dies with it, as does the browser
    // session. So this runs only for the last client.
    await expectInvalidGrant(`${label}: replayed old refresh token refused`, () =>
      client.refreshTokenGrant(config, oldRefresh))
    await expectInvalidGrant(`${label}: replay revoked the rotated token too`, () =>
      client.refreshTokenGrant(config, renewed.refresh_token))
  } else {
    await step(`${label}: revocation of the new refresh token`, () =>
      client.tokenRevocation(config, renewed.refresh_token))
    await expectInvalidGrant(`${label}: revoked refresh token refused`, () =>
      client.refreshTokenGrant(config, renewed.refresh_token))
  }
}

// Confidential first: the public client's replay check ends the browser session.
await signIn({ label: 'confidential', clientId: env('GH_CONF_ID'), secret: env('GH_CONF_SECRET') })
await signIn({ label: 'public', clientId: env('GH_PUB_ID'), secret: undefined, reuseOldRefreshToken: true })
console.log(`${passed} passed, 0 failed`)
