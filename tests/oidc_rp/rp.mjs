// An independent OpenID Connect relying party for tests/test_oidc_interop.py, on openid-client
// (panva; OpenID Certified). Reads its settings as JSON from argv[2], prints the authorization
// URL, reads the callback URL the browser reached from stdin, then completes the code flow with
// PKCE (S256) and private_key_jwt, checks the ID token (signature against the hub's JWKS, iss,
// aud, nonce, RFC 9207 iss) and calls UserInfo. Prints one JSON line with what it got.
import * as client from 'openid-client';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

const settings = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const alg = settings.jwk.kty === 'EC' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
const key = await crypto.subtle.importKey('jwk', settings.jwk, alg, false, ['sign']);

const config = await client.discovery(
  new URL(settings.issuer), settings.client_id,
  { id_token_signed_response_alg: settings.id_token_alg || 'RS256' },
  client.PrivateKeyJwt({ key, kid: settings.jwk.kid }),
  { execute: [client.allowInsecureRequests] },  // the test hub listens on http://127.0.0.1
);
const verifier = client.randomPKCECodeVerifier();
const nonce = client.randomNonce();
const state = client.randomState();
const url = client.buildAuthorizationUrl(config, {
  redirect_uri: settings.redirect_uri, scope: 'openid', nonce, state,
  code_challenge: await client.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
});
console.log(url.href);

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  try {
    const tokens = await client.authorizationCodeGrant(config, new URL(line.trim()), {
      pkceCodeVerifier: verifier, expectedNonce: nonce, expectedState: state, idTokenExpected: true,
    });
    const claims = tokens.claims();
    const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
    console.log(JSON.stringify({ ok: true, claims, userinfo }));
  } catch (error) {
    console.log(JSON.stringify({ ok: false, error: String(error), code: error.code || null }));
  }
  break;
}
