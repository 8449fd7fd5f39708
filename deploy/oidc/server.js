// deploy/oidc/server.js: a small OpenID Connect provider on loopback for the
// dev cluster and the tests, built on the oidc-provider package. What it
// serves, its options and its files are described in docs/auth-dev-idp.md;
// `node server.js --help` prints the options.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';

import { Provider, errors } from 'oidc-provider';

const HELP = `usage: node server.js --port PORT --data-dir DIR [options]

  --port PORT                 listen on 127.0.0.1:PORT (loopback only; env OIDC_PORT)
  --data-dir DIR              signing keys, cookie keys, default users (env OIDC_DATA_DIR)
  --users FILE                users (JSON array); default DIR/users.json, made at first start
  --audience AUD              aud of access tokens (default: the dashboard client id)
  --dashboard-client-id ID    default netbird-dashboard
  --agent-client-id ID        default netbird-client
  --dashboard-origin URL      the dashboard's origin: redirect URIs URL/nb-auth and
                              URL/nb-silent-auth, CORS allowed; repeatable or comma list
                              (env OIDC_DASHBOARD_ORIGINS; default http://localhost:3000)
  --dashboard-redirect-uri U  one more redirect URI for the dashboard client (repeatable)
  --agent-redirect-uri U      one more redirect URI for the agent client (repeatable;
                              http://localhost:53000/ and http://localhost:54000/ always)
  --pid-file FILE             written once listening, removed on exit
  --log-file FILE             append the log here (default stderr)

SIGUSR1 adds a new signing key (new kid) in front of the old ones; the
old ones stay published in the JWKS (at most 3 are kept).`;

// ---------------------------------------------------------------- options

function parseArgs(argv) {
        const env = process.env;
        const o = {
                port: env.OIDC_PORT || '',
                dataDir: env.OIDC_DATA_DIR || '',
                users: '',
                audience: env.OIDC_AUDIENCE || '',
                dashboardClientId: 'netbird-dashboard',
                agentClientId: 'netbird-client',
                dashboardOrigins: [],
                dashboardRedirects: [],
                agentRedirects: [],
                pidFile: '',
                logFile: '',
        };
        const lists = { '--dashboard-origin': 'dashboardOrigins', '--dashboard-redirect-uri': 'dashboardRedirects',
                '--agent-redirect-uri': 'agentRedirects' };
        const single = { '--port': 'port', '--data-dir': 'dataDir', '--users': 'users',
                '--audience': 'audience', '--dashboard-client-id': 'dashboardClientId',
                '--agent-client-id': 'agentClientId', '--pid-file': 'pidFile', '--log-file': 'logFile' };
        for (let i = 0; i < argv.length; i++) {
                let [flag, value] = argv[i].split(/=(.*)/s, 2);
                if (flag === '-h' || flag === '--help') {
                        console.log(HELP);
                        process.exit(0);
                }
                if (!(flag in single) && !(flag in lists))
                        usageError(`unknown argument ${argv[i]}`);
                if (value === undefined) {
                        if (i + 1 >= argv.length) usageError(`${flag} needs a value`);
                        value = argv[++i];
                }
                if (flag in single) o[single[flag]] = value;
                else o[lists[flag]].push(...value.split(',').map((s) => s.trim()).filter(Boolean));
        }
        if (env.OIDC_DASHBOARD_ORIGINS && o.dashboardOrigins.length === 0)
                o.dashboardOrigins = env.OIDC_DASHBOARD_ORIGINS.split(',').map((s) => s.trim()).filter(Boolean);
        if (o.dashboardOrigins.length === 0) o.dashboardOrigins = ['http://localhost:3000'];
        if (!/^[0-9]+$/.test(o.port) || +o.port < 1 || +o.port > 65535) usageError('--port wants a port number');
        if (!o.dataDir) usageError('--data-dir is required');
        for (const u of o.dashboardOrigins) {
                const url = URL.parse(u);
                if (!url || !/^https?:$/.test(url.protocol) || url.origin !== u.replace(/\/$/, ''))
                        usageError(`--dashboard-origin ${u} is not an origin (scheme://host[:port])`);
        }
        o.dashboardOrigins = o.dashboardOrigins.map((u) => URL.parse(u).origin);
        o.audience ||= o.dashboardClientId;
        return o;
}

function usageError(msg) {
        console.error(`oidc: ${msg}\n\n${HELP}`);
        process.exit(2);
}

// A bad data directory or users file: one line, exit status 2.
function orDie(fn) {
        try {
                return fn();
        } catch (e) {
                console.error(`oidc: error: ${e.message}`);
                process.exit(2);
        }
}

const opts = parseArgs(process.argv.slice(2));
// Loopback only: plain HTTP, passwords in a file, state in memory.
const HOST = '127.0.0.1';
const issuer = `http://${HOST}:${opts.port}`;
// Access tokens are bound to this resource indicator (it must be an absolute
// URI); their aud is opts.audience.
const RESOURCE = 'urn:netbird:management';
const API_SCOPE = 'api';

const logStream = opts.logFile ? fs.createWriteStream(opts.logFile, { flags: 'a' }) : process.stderr;
function log(msg) {
        logStream.write(`${new Date().toISOString()} ${msg}\n`);
}

// ---------------------------------------------------------------- files in the data directory

orDie(() => fs.mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 }));

function readJson(file) {
        try {
                return JSON.parse(fs.readFileSync(file, 'utf8'));
        } catch (e) {
                if (e.code === 'ENOENT') return undefined;
                throw new Error(`${file}: ${e.message}`);
        }
}

// Written to a temporary name first, so a crash never leaves half a file.
function writeSecretJson(file, value) {
        fs.writeFileSync(`${file}.tmp`, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
        fs.renameSync(`${file}.tmp`, file);
}

const randomText = (bytes) => crypto.randomBytes(bytes).toString('base64url');

function newSigningKey() {
        const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
        return { ...privateKey.export({ format: 'jwk' }), kid: randomText(12), alg: 'RS256', use: 'sig' };
}

const jwksFile = path.join(opts.dataDir, 'jwks.json');
let jwks = orDie(() => readJson(jwksFile));
if (!jwks) {
        jwks = { keys: [newSigningKey()] };
        writeSecretJson(jwksFile, jwks);
        log(`new signing key ${jwks.keys[0].kid}`);
}

const cookieKeysFile = path.join(opts.dataDir, 'cookie-keys.json');
let cookieKeys = orDie(() => readJson(cookieKeysFile));
if (!cookieKeys) {
        cookieKeys = [randomText(32)];
        writeSecretJson(cookieKeysFile, cookieKeys);
}

// Users: [{login, password, sub, email, name, groups}]. OIDC_USERS (the
// same JSON) wins over the file. Without either, DIR/users.json is made
// with alice and bob and random passwords.
function loadUsers() {
        let list;
        if (process.env.OIDC_USERS) {
                try {
                        list = JSON.parse(process.env.OIDC_USERS);
                } catch (e) {
                        throw new Error(`OIDC_USERS: ${e.message}`);
                }
        } else {
                const file = opts.users || path.join(opts.dataDir, 'users.json');
                list = readJson(file);
                if (!list && !opts.users) {
                        list = [
                                { login: 'alice', name: 'Alice Owner', email: 'alice@example.com', groups: ['admins', 'devs'] },
                                { login: 'bob', name: 'Bob User', email: 'bob@example.com', groups: ['devs'] },
                        ].map((u) => ({ ...u, sub: crypto.randomUUID(), password: randomText(12) }));
                        writeSecretJson(file, list);
                } else if (!list) {
                        throw new Error(`--users ${file} does not exist`);
                }
        }
        if (!Array.isArray(list)) throw new Error('users must be a JSON array');
        const byLogin = new Map();
        for (const u of list) {
                if (typeof u.login !== 'string' || !u.login || typeof u.password !== 'string' || !u.password)
                        throw new Error('every user needs a login and a password');
                byLogin.set(u.login, { ...u, sub: u.sub || u.login, groups: u.groups || [] });
        }
        return byLogin;
}

const users = orDie(loadUsers);
const usersBySub = new Map([...users.values()].map((u) => [u.sub, u]));

const digest = (s) => crypto.createHash('sha256').update(s, 'utf8').digest();
const decoyPassword = randomText(16);

// The same work for a known and an unknown login (two digests and one
// timingSafeEqual over fixed-length values), so the answer time says
// nothing about the password or whether the login exists.
function checkPassword(login, password) {
        const user = users.get(login);
        const ok = crypto.timingSafeEqual(digest(password), digest(user ? user.password : decoyPassword));
        return ok && user ? user : undefined;
}

function userClaims(user) {
        return { email: user.email, email_verified: true, name: user.name, groups: user.groups };
}

// ---------------------------------------------------------------- the provider

const dashboardRedirects = [...opts.dashboardOrigins.flatMap((o) => [`${o}/nb-auth`, `${o}/nb-silent-auth`]),
        ...opts.dashboardRedirects];
const agentRedirects = [...new Set(['http://localhost:53000/', 'http://localhost:54000/', ...opts.agentRedirects])];
const corsOrigins = new Set([...opts.dashboardOrigins,
        ...[...dashboardRedirects, ...agentRedirects].map((u) => URL.parse(u)?.origin).filter(Boolean)]);

function configuration() {
        return {
                clients: [
                        {
                                client_id: opts.dashboardClientId,
                                application_type: 'web',
                                token_endpoint_auth_method: 'none',
                                grant_types: ['authorization_code', 'refresh_token'],
                                response_types: ['code'],
                                redirect_uris: dashboardRedirects,
                                post_logout_redirect_uris: opts.dashboardOrigins.map((o) => `${o}/`),
                        },
                        {
                                client_id: opts.agentClientId,
                                application_type: 'web',
                                token_endpoint_auth_method: 'none',
                                grant_types: ['authorization_code', 'refresh_token',
                                        'urn:ietf:params:oauth:grant-type:device_code'],
                                response_types: ['code'],
                                redirect_uris: agentRedirects,
                        },
                ],
                jwks,
                cookies: { keys: cookieKeys },
                scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
                claims: {
                        openid: ['sub'],
                        email: ['email', 'email_verified'],
                        profile: ['name', 'groups'],
                        groups: ['groups'],
                },
                // The ID token carries the scopes' claims (email, name,
                // groups) even though an access token is issued too.
                conformIdTokenClaims: false,
                async findAccount(ctx, sub) {
                        const user = usersBySub.get(sub);
                        if (!user) return undefined;
                        return { accountId: sub, claims: async () => ({ sub, ...userClaims(user) }) };
                },
                async extraTokenClaims(ctx, token) {
                        const user = token.accountId && usersBySub.get(token.accountId);
                        return user ? userClaims(user) : undefined;
                },
                features: {
                        devInteractions: { enabled: false },
                        deviceFlow: {
                                enabled: true,
                                userCodeInputSource: async (ctx, form, out, err) => {
                                        const msg = err ? alert('That code did not work; try again.')
                                                : '<p>Enter the code your NetBird client shows.</p>';
                                        html(ctx, 'Connect a device', `${msg}${form}
<p><button type="submit" form="op.deviceInputForm">Continue</button></p>`);
                                },
                                userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
                                        html(ctx, 'Confirm the device', `<p>${esc(client.clientId)} shows the code
<code>${esc(userCode)}</code>? Continue only if it does.</p>${form}
<p><button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button></p>`);
                                },
                                successSource: async (ctx) => html(ctx, 'Device connected', '<p>You can close this window.</p>'),
                        },
                        rpInitiatedLogout: {
                                enabled: true,
                                logoutSource: async (ctx, form) => html(ctx, 'Sign out', `${form}
<p><button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>
<button type="submit" form="op.logoutForm">Stay signed in</button></p>`),
                                postLogoutSuccessSource: async (ctx) => html(ctx, 'Signed out', '<p>You are signed out.</p>'),
                        },
                        revocation: { enabled: true },
                        resourceIndicators: {
                                enabled: true,
                                defaultResource: async () => RESOURCE,
                                // Also with scope openid: the access token is for the API.
                                useGrantedResource: async () => true,
                                getResourceServerInfo: async (ctx, indicator) => {
                                        if (indicator !== RESOURCE) throw new errors.InvalidTarget();
                                        return {
                                                scope: API_SCOPE,
                                                audience: opts.audience,
                                                accessTokenFormat: 'jwt',
                                                accessTokenTTL: 3600,
                                                jwt: { sign: { alg: 'RS256' } },
                                        };
                                },
                        },
                },
                // Refresh tokens for both clients whatever the scope: the
                // dashboard asks for offline_access without prompt=consent,
                // which the provider would drop.
                issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
                expiresWithSession: async () => false,
                clientBasedCORS: (ctx, origin) => corsOrigins.has(origin),
                interactions: { url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
                ttl: {
                        AccessToken: 3600,
                        AuthorizationCode: 60,
                        DeviceCode: 600,
                        Grant: 14 * 86400,
                        IdToken: 3600,
                        Interaction: 600,
                        RefreshToken: 14 * 86400,
                        Session: 14 * 86400,
                },
                renderError: async (ctx, out) => {
                        html(ctx, 'Error', `<p>${esc(out.error)}: ${esc(out.error_description || '')}</p>`);
                },
        };
}

// Made again when the keys rotate; sessions, grants and tokens live in the
// package's in-memory store, which all instances share.
let provider;
let handler;
function makeProvider() {
        provider = new Provider(issuer, configuration());
        provider.on('server_error', (ctx, err) => log(`server error: ${err.stack || err}`));
        handler = provider.callback();
}
orDie(makeProvider); // a jwks.json it cannot use, say

function rotateKeys() {
        const key = newSigningKey();
        jwks = { keys: [key, ...jwks.keys].slice(0, 3) };
        writeSecretJson(jwksFile, jwks);
        makeProvider();
        log(`signing key rotated: new kid ${key.kid}; published ${jwks.keys.map((k) => k.kid).join(', ')}`);
}

// ---------------------------------------------------------------- login page

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
        return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 22em; margin: 4em auto"><h1>${esc(title)}</h1>${body}</body></html>`;
}

const alert = (text) => `<p role="alert" style="color: #b00">${esc(text)}</p>`;

// The provider's own pages (device flow, sign-out, errors) in our frame.
function html(ctx, title, body) {
        ctx.type = 'html';
        ctx.body = page(title, body);
}

function loginForm(uid, clientId, login, error) {
        return page('Sign in', `<p>to ${esc(clientId)} (NetBird control plane, dev identity provider)</p>
${error ? alert(error) : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<p><label>Login<br><input name="login" value="${esc(login || '')}" autofocus required></label></p>
<p><label>Password<br><input name="password" type="password" required></label></p>
<p><button type="submit">Sign in</button></p>
</form>`);
}

function send(res, status, html) {
        res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
        res.end(html);
}

async function readForm(req) {
        let body = '';
        for await (const chunk of req) {
                body += chunk;
                if (body.length > 16384) throw new Error('form too large');
        }
        return new URLSearchParams(body);
}

// Our clients get everything they ask for: no consent page.
async function grantAll(interaction) {
        const { prompt: { details }, params, session, grantId } = interaction;
        const grant = grantId ? await provider.Grant.find(grantId)
                : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
        if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
        if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
        for (const [indicator, scopes] of Object.entries(details.missingResourceScopes || {}))
                grant.addResourceScope(indicator, scopes.join(' '));
        return grant.save();
}

async function interaction(req, res, uid, action) {
        const details = await provider.interactionDetails(req, res);
        if (details.uid !== uid) return send(res, 400, page('Error', '<p>This sign-in has expired; start again.</p>'));
        const clientId = details.params.client_id;
        if (details.prompt.name === 'consent') {
                const grantId = await grantAll(details);
                return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
        }
        if (req.method === 'GET' && !action)
                return send(res, 200, loginForm(uid, clientId, details.params.login_hint));
        if (req.method !== 'POST' || action !== 'login') return send(res, 405, page('Error', '<p>Not allowed.</p>'));
        const form = await readForm(req);
        const login = form.get('login') || '';
        const user = checkPassword(login, form.get('password') || '');
        if (!user) {
                log(`login refused for ${JSON.stringify(login)} (client ${clientId})`);
                return send(res, 401, loginForm(uid, clientId, login, 'Wrong login or password.'));
        }
        log(`login ${user.login} (sub ${user.sub}, client ${clientId})`);
        return provider.interactionFinished(req, res, { login: { accountId: user.sub } },
                { mergeWithLastSubmission: false });
}

// ---------------------------------------------------------------- HTTP

const server = http.createServer(async (req, res) => {
        const pathname = (req.url || '/').split('?')[0];
        res.on('finish', () => log(`${req.method} ${pathname} ${res.statusCode}`));
        const m = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?$/.exec(pathname);
        if (!m) return handler(req, res);
        try {
                await interaction(req, res, m[1], m[2]);
        } catch (err) {
                // SessionNotFound and the like: the interaction cookie is gone.
                log(`interaction error: ${err.name}: ${err.message}`);
                if (!res.headersSent) send(res, 400, page('Error', `<p>${esc(err.message)}</p>`));
        }
});

let stopping = false;
function stop(sig) {
        if (stopping) return;
        stopping = true;
        log(`${sig}: stopping`);
        if (opts.pidFile) fs.rmSync(opts.pidFile, { force: true });
        server.close(() => process.exit(0));
        server.closeAllConnections();
        setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGUSR1', () => {
        try {
                rotateKeys();
        } catch (err) {
                log(`key rotation failed: ${err.message}`);
        }
});

server.on('error', (err) => {
        log(`cannot listen on ${HOST}:${opts.port}: ${err.message}`);
        process.exit(1);
});
server.listen(+opts.port, HOST, () => {
        if (opts.pidFile) fs.writeFileSync(opts.pidFile, `${process.pid}\n`);
        log(`listening: issuer ${issuer}, signing kid ${jwks.keys[0].kid}, ${users.size} users, `
                + `dashboard client ${opts.dashboardClientId}, agent client ${opts.agentClientId}, audience ${opts.audience}`);
});
