// A real OAuth 2.1 authorization server on loopback for tollgate's end-to-end tests, built on
// oauth2-mock-server (RFC 8414 / OpenID metadata, JWKS, authorization code + PKCE,
// client credentials, RFC 7662 introspection), issuing RS256-signed JWTs.
//
// Additions for tests, under /_test/ (never part of a real server):
//   POST /_test/mint      {claims, expires_in, kid, unpublished, alg}  -> {token}
//                         claims are merged into the payload; a null value deletes a claim.
//                         unpublished: sign with a key the JWKS does not contain.
//   POST /_test/confused  {claims}  -> {token}: HS256 signed with the public key's PEM.
//   POST /_test/rotate    {alg}     -> {kid}: a new signing key, published in the JWKS.
//   POST /_test/opaque    {claims}  -> {token}: an opaque token, known to /introspect.
//   POST /_test/jwks      {down}    -> {}: the JWKS endpoint answers 503 while down.
//   GET  /_test/stats               -> {jwks_fetches, introspections, tokens, refreshes}
//   POST /_test/provider  {down, slow_ms, access_ttl} -> {}: the token endpoint's behaviour.
//   POST /_test/revoke    {refresh} -> {}: revokes the grant that refresh token belongs to.
//   GET  /_test/refresh?token=T     -> {known, used, current, revoked}: a refresh token's state.
//   GET  /_test/login?sub=S          -> sets this browser's session cookie: the user signed in
//                         here. Codes issued to the browser carry S as the token's sub.
//   POST /_test/provider  {iss}      -> the provider's authorization responses carry RFC 9207 iss.
//
// As a third-party provider (the server tollgate's connections act on), refresh tokens are
// real: each is single use and rotated on every refresh; reusing one revokes its grant; a
// revoked grant answers invalid_grant. Access tokens are checked by GET /api/profile.
// Provider clients authenticate with HTTP Basic: demo-client / demo-secret.
//
// Usage: node oauth_server.mjs PORT   (prints "ready <issuer>" once listening)
// Introspection clients authenticate with HTTP Basic: tollgate-rs / rs-secret.

import http from "node:http";
import { randomBytes, createPublicKey, createHash } from "node:crypto";
import { OAuth2Issuer, OAuth2Service, JWKStore } from "oauth2-mock-server";
import { SignJWT, importJWK } from "jose";

const port = Number(process.argv[2] ?? 0);
const INTROSPECTION_CLIENT = { id: "tollgate-rs", secret: "rs-secret" };

const issuer = new OAuth2Issuer();
const service = new OAuth2Service(issuer);
const unpublished = new JWKStore();
let currentKid = (await issuer.keys.generate("RS256")).kid;

const stats = { jwks_fetches: 0, introspections: 0, tokens: 0, refreshes: 0 };
const PROVIDER_CLIENT = { id: "demo-client", secret: "demo-secret" };
const provider = { down: false, slow_ms: 0, access_ttl: 3600 };
const grants = new Map(); // grant id -> {sub, revoked, current_refresh, issued}
const refreshTokens = new Map(); // refresh token -> {grant, used}
const accessTokens = new Map(); // access token -> {sub, exp}

function issueProviderTokens(grantId) {
  const grant = grants.get(grantId);
  const refresh = randomBytes(24).toString("base64url");
  const access = randomBytes(24).toString("base64url");
  refreshTokens.set(refresh, { grant: grantId, used: false });
  accessTokens.set(access, { sub: grant.sub, exp: Date.now() + provider.access_ttl * 1000 });
  grant.current_refresh = refresh;
  grant.issued += 1;
  return { access_token: access, token_type: "Bearer", expires_in: provider.access_ttl, refresh_token: refresh };
}

async function providerToken(req, res, form) {
  const client = basicAuth(req);
  if (!client || client.id !== PROVIDER_CLIENT.id || client.secret !== PROVIDER_CLIENT.secret) {
    send(res, 401, { error: "invalid_client" });
    return;
  }
  if (provider.down) {
    send(res, 503, { error: "temporarily_unavailable" });
    return;
  }
  if (provider.slow_ms) await new Promise((r) => setTimeout(r, provider.slow_ms));
  if (form.grant_type === "refresh_token") {
    stats.refreshes += 1;
    const entry = refreshTokens.get(form.refresh_token ?? "");
    const grant = entry && grants.get(entry.grant);
    if (!entry || !grant || grant.revoked) {
      send(res, 400, { error: "invalid_grant", error_description: "unknown or revoked refresh token" });
      return;
    }
    if (entry.used) {
      grant.revoked = true; // reuse of a rotated token: the grant is compromised
      send(res, 400, { error: "invalid_grant", error_description: "refresh token reused" });
      return;
    }
    entry.used = true;
    send(res, 200, issueProviderTokens(entry.grant));
    return;
  }
  if (form.grant_type === "authorization_code") {
    const saved = codes.get(form.code ?? "");
    if (!saved || !saved.code_challenge || !form.code_verifier) {
      send(res, 400, { error: "invalid_grant", error_description: "unknown code or PKCE missing" });
      return;
    }
    const digest = createHash("sha256").update(form.code_verifier).digest("base64url");
    if (digest !== saved.code_challenge || saved.redirect_uri !== form.redirect_uri) {
      send(res, 400, { error: "invalid_grant", error_description: "PKCE or redirect_uri mismatch" });
      return;
    }
    codes.delete(form.code);
    const grantId = randomBytes(8).toString("hex");
    grants.set(grantId, { sub: "johndoe", revoked: false, current_refresh: null, issued: 0 });
    send(res, 200, issueProviderTokens(grantId));
    return;
  }
  send(res, 400, { error: "unsupported_grant_type" });
}
const opaque = new Map();
const codes = new Map();
let jwksDown = false;

function basicAuth(req) {
  const h = req.headers.authorization ?? "";
  if (!h.startsWith("Basic ")) return null;
  const [id, secret] = Buffer.from(h.slice(6), "base64").toString().split(":");
  return { id: decodeURIComponent(id ?? ""), secret: decodeURIComponent(secret ?? "") };
}

// Authorization code: remember what the client asked for, to put in the token.
function sessionSub(req) {
  const cookie = (req.headers.cookie ?? "").split(";").map((c) => c.trim()).find((c) => c.startsWith("mock_sub="));
  return cookie ? decodeURIComponent(cookie.slice("mock_sub=".length)) : undefined;
}

service.on("beforeAuthorizeRedirect", (redirect, req) => {
  const code = redirect.url.searchParams.get("code");
  if (provider.iss && String(req.query.redirect_uri ?? "").endsWith("/connect/callback")) {
    redirect.url.searchParams.set("iss", provider.iss);
  }
  if (code) {
    codes.set(code, {
      sub: sessionSub(req),
      scope: req.query.scope,
      resource: req.query.resource,
      client_id: req.query.client_id,
      code_challenge: req.query.code_challenge,
      redirect_uri: req.query.redirect_uri,
    });
  }
});

service.on("beforeTokenSigning", (token, req) => {
  stats.tokens += 1;
  const body = req.body ?? {};
  const fromCode = body.code ? codes.get(body.code) : undefined;
  const clientId = body.client_id ?? basicAuth(req)?.id ?? fromCode?.client_id;
  if (clientId) token.payload.client_id = clientId;
  const resource = body.resource ?? fromCode?.resource;
  if (resource) token.payload.aud = resource;
  if (fromCode?.scope && !body.scope) token.payload.scope = fromCode.scope;
  if (fromCode?.sub) token.payload.sub = fromCode.sub;
  token.payload.jti = randomBytes(8).toString("hex");
  token.header.kid = currentKid;
});

service.on("beforeIntrospect", (response, req) => {
  stats.introspections += 1;
  const client = basicAuth(req);
  if (!client || client.id !== INTROSPECTION_CLIENT.id || client.secret !== INTROSPECTION_CLIENT.secret) {
    response.statusCode = 401;
    response.body = { error: "invalid_client" };
    return;
  }
  const claims = opaque.get(req.body?.token ?? "");
  response.body = claims ? { active: true, token_type: "Bearer", ...claims } : { active: false };
});

// RFC 8414 metadata at its own well-known path, same content as the OpenID document.
service.on("beforeWellKnownOpenIdConfiguration", (response) => {
  response.body.introspection_endpoint_auth_methods_supported = ["client_secret_basic"];
});

function baseClaims(extra, expiresIn) {
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    iss: issuer.url,
    iat: now,
    nbf: now - 10,
    exp: now + (expiresIn ?? 3600),
    jti: randomBytes(8).toString("hex"),
  };
  for (const [k, v] of Object.entries(extra ?? {})) {
    if (v === null) delete payload[k];
    else payload[k] = v;
  }
  return payload;
}

async function sign(payload, jwk, alg) {
  const key = await importJWK(jwk, jwk.alg);
  return new SignJWT(payload)
    .setProtectedHeader({ typ: "JWT", alg: alg ?? jwk.alg, kid: jwk.kid })
    .sign(key);
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString();
  return { text, json: () => (text ? JSON.parse(text) : {}) };
}

function send(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

const testRoutes = {
  "POST /_test/mint": async (body) => {
    let jwk;
    if (body.unpublished) {
      jwk = unpublished.get() ?? (await unpublished.generate("RS256"));
    } else {
      jwk = issuer.keys.get(body.kid ?? currentKid);
    }
    const full = jwk.d ? jwk : (body.unpublished ? unpublished : issuer.keys).toJSON(true).find((k) => k.kid === jwk.kid);
    return { token: await sign(baseClaims(body.claims, body.expires_in), full) };
  },
  "POST /_test/confused": async (body) => {
    const pub = issuer.keys.toJSON().find((k) => k.kid === currentKid);
    const pem = createPublicKey({ key: pub, format: "jwk" }).export({ type: "spki", format: "pem" });
    const token = await new SignJWT(baseClaims(body.claims))
      .setProtectedHeader({ typ: "JWT", alg: "HS256", kid: currentKid })
      .sign(Buffer.from(pem));
    return { token };
  },
  "POST /_test/rotate": async (body) => {
    currentKid = (await issuer.keys.generate(body.alg ?? "RS256")).kid;
    return { kid: currentKid };
  },
  "POST /_test/opaque": async (body) => {
    const token = randomBytes(24).toString("base64url");
    const now = Math.floor(Date.now() / 1000);
    opaque.set(token, { iss: issuer.url, exp: now + 3600, iat: now, ...(body.claims ?? {}) });
    for (const [k, v] of Object.entries(body.claims ?? {})) if (v === null) delete opaque.get(token)[k];
    return { token };
  },
  "POST /_test/jwks": async (body) => {
    jwksDown = Boolean(body.down);
    return {};
  },
  "GET /_test/stats": async () => stats,
  "POST /_test/provider": async (body) => {
    Object.assign(provider, body);
    return {};
  },
  "POST /_test/revoke": async (body) => {
    const entry = refreshTokens.get(body.refresh ?? "");
    if (entry) grants.get(entry.grant).revoked = true;
    return { revoked: Boolean(entry) };
  },
};

const server = http.createServer(async (req, res) => {
  try {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const route = testRoutes[`${req.method} ${path}`];
    if (route) {
      const body = req.method === "POST" ? (await readJson(req)).json() : {};
      send(res, 200, await route(body));
      return;
    }
    if (path === "/_test/login") {
      const sub = new URL(req.url, "http://x").searchParams.get("sub") ?? "";
      res.writeHead(200, { "content-type": "application/json", "set-cookie": `mock_sub=${encodeURIComponent(sub)}; Path=/; HttpOnly` });
      res.end(JSON.stringify({ sub }));
      return;
    }
    if (path === "/_test/refresh") {
      const token = new URL(req.url, "http://x").searchParams.get("token") ?? "";
      const entry = refreshTokens.get(token);
      const grant = entry && grants.get(entry.grant);
      send(res, 200, {
        known: Boolean(entry),
        used: Boolean(entry?.used),
        current: Boolean(grant && grant.current_refresh === token),
        revoked: Boolean(grant?.revoked),
        issued: grant?.issued ?? 0,
      });
      return;
    }
    if (path === "/api/profile") {
      const h = req.headers.authorization ?? "";
      const entry = h.startsWith("Bearer ") ? accessTokens.get(h.slice(7)) : undefined;
      if (!entry || entry.exp < Date.now()) {
        send(res, 401, { error: "invalid_token" });
        return;
      }
      send(res, 200, { username: entry.sub, display_name: "John Doe", plan: "pro" });
      return;
    }
    if (req.method === "POST" && path === "/token" && basicAuth(req)?.id === PROVIDER_CLIENT.id) {
      const { text } = await readJson(req);
      await providerToken(req, res, Object.fromEntries(new URLSearchParams(text)));
      return;
    }
    if (path === "/jwks") {
      stats.jwks_fetches += 1;
      if (jwksDown) {
        send(res, 503, { error: "temporarily_unavailable" });
        return;
      }
    }
    if (path === "/.well-known/oauth-authorization-server") {
      req.url = "/.well-known/openid-configuration";
    }
    if (req.method === "POST" && path === "/introspect") {
      const { text } = await readJson(req);
      req.body = Object.fromEntries(new URLSearchParams(text));
    }
    service.requestHandler(req, res);
  } catch (err) {
    send(res, 500, { error: "server_error", error_description: String(err) });
  }
});

server.listen(port, "127.0.0.1", () => {
  const { port: bound } = server.address();
  issuer.url = `http://127.0.0.1:${bound}`;
  console.log(`ready ${issuer.url}`);
});

for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
