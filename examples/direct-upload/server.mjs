// The site's backend for index.html: serves the page and signs its calls to spbridge with the
// connection's webhook secret (Standard Webhooks), which never reaches the browser.
// Node 18+, no dependencies:
//   SPBRIDGE_URL=https://abc.execute-api.eu-west-1.amazonaws.com SPBRIDGE_CONNECTION=contoso-docs \
//   SPBRIDGE_WEBHOOK_SECRET=whsec_... PORT=8080 node server.mjs
// Put your own checks (who is signed in, which folder, which sizes) where marked.
import { createHmac, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

const { SPBRIDGE_URL, SPBRIDGE_CONNECTION, SPBRIDGE_WEBHOOK_SECRET } = process.env;
const PORT = Number(process.env.PORT || 8080);
const FOLDER = process.env.UPLOAD_FOLDER || 'website';
const page = readFileSync(new URL('./index.html', import.meta.url));
const key = Buffer.from(SPBRIDGE_WEBHOOK_SECRET.replace(/^whsec_/, ''), 'base64');

// POST a signed JSON body to spbridge; answers [status, JSON].
async function spbridge(path, body) {
  const text = JSON.stringify(body);
  const id = `msg_${randomUUID()}`;
  const ts = Math.floor(Date.now() / 1000).toString();
  const sig = createHmac('sha256', key).update(`${id}.${ts}.${text}`).digest('base64');
  const res = await fetch(`${SPBRIDGE_URL}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'webhook-id': id,
               'webhook-timestamp': ts, 'webhook-signature': `v1,${sig}` },
    body: text,
  });
  return [res.status, await res.text()];
}

async function readJson(req) {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 64 * 1024) throw new Error('body too large');
  }
  return text ? JSON.parse(text) : {};
}

const base = `/uploads/${encodeURIComponent(SPBRIDGE_CONNECTION)}/sessions`;

createServer(async (req, res) => {
  const send = (status, text, type = 'application/json') => {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(text);
  };
  try {
    const url = new URL(req.url, 'http://localhost');
    let m;
    if (req.method === 'GET' && url.pathname === '/') {
      return send(200, page, 'text/html; charset=utf-8');
    }
    if (req.method === 'POST' && url.pathname === '/api/upload-sessions') {
      const { name, size } = await readJson(req);
      // Your checks here: is the visitor allowed to upload, is this size acceptable?
      return send(...await spbridge(base, { name, size, folder: FOLDER, conflict: 'rename' }));
    }
    if (req.method === 'POST' && (m = url.pathname.match(/^\/api\/upload-sessions\/([0-9a-f]{32})\/complete$/))) {
      const { parts } = await readJson(req);
      return send(...await spbridge(`${base}/${m[1]}/complete`, parts ? { parts } : {}));
    }
    if (req.method === 'GET' && url.pathname === '/api/upload-status') {
      // Only a job id and its token pass through: the page cannot make this server fetch
      // anything else.
      const job = url.searchParams.get('job') || '';
      const token = url.searchParams.get('token') || '';
      if (!/^[0-9a-f]{32}$/.test(job) || !/^[A-Za-z0-9_-]{1,128}$/.test(token)) {
        return send(400, JSON.stringify({ message: 'job and token are required' }));
      }
      const r = await fetch(`${SPBRIDGE_URL}/uploads/${job}?token=${token}`);
      return send(r.status, await r.text());
    }
    send(404, JSON.stringify({ message: 'not found' }));
  } catch (e) {
    send(400, JSON.stringify({ message: String(e.message || e) }));
  }
}).listen(PORT, process.env.HOST || '127.0.0.1', () => console.log(`listening on port ${PORT}`));
