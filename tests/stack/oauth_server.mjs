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
//   GET  /_test/stats               -> {jwks_fetches, introspections, tokens}
//
// Usage: node oauth_server.mjs PORT   (prints "ready <issuer>" once listening)
// Introspection clients authenticate with HTTP Basic: tollgate-rs / rs-secret.

import http from "node:http";
import { randomBytes, createPublicKey } from "node:crypto";
import { OAuth2Issuer, OAuth2Service, JWKStore } from "oauth2-mock-server";
import { SignJWT, importJWK } from "jose";

const port = Number(process.argv[2] ?? 0);
const INTROSPECTION_CLIENT = { id: "tollgate-rs", secret: "rs-secret" };

const issuer = new OAuth2Issuer();
const service = new OAuth2Service(issuer);
const unpublished = new JWKStore();
let currentKid = (await issuer.keys.generate("RS256")).kid;

const stats = { jwks_fetches: 0, introspections: 0, tokens: 0 };
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
service.on("beforeAuthorizeRedirect", (redirect, req) => {
  const code = redirect.url.searchParams.get("code");
  if (code) {
    codes.set(code, {
      scope: req.query.scope,
      resource: req.query.resource,
      client_id: req.query.client_id,
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
