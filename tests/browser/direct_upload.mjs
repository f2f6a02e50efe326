// A website's direct upload in a real browser: examples/direct-upload (the page and its Node
// backend, unchanged) in front of spbridge's upload-ingest, the file PUT straight to moto's S3
// on another origin (so every PUT needs the bucket's CORS), then completed and polled.
// Env: SPBRIDGE_URL, SPBRIDGE_CONNECTION, SPBRIDGE_WEBHOOK_SECRET (for the example backend),
// PORT (where the backend listens), FILES (comma-separated paths to upload, in order).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { launch, check } from './lib.mjs';

const { PORT, FILES } = process.env;
const serverPath = fileURLToPath(new URL('../../examples/direct-upload/server.mjs', import.meta.url));
const server = spawn(process.execPath, [serverPath], { env: process.env, stdio: ['ignore', 'pipe', 'inherit'] });
await new Promise((resolve, reject) => {
  server.stdout.on('data', (d) => { if (String(d).includes('listening')) resolve(); });
  server.on('exit', (code) => reject(new Error(`the example backend exited (${code})`)));
  setTimeout(() => reject(new Error('the example backend did not start')), 10000);
});

const browser = await launch();
const summary = { uploads: [] };
try {
  const page = await browser.newPage();
  const puts = [];
  page.on('requestfinished', async (r) => {
    if (r.method() === 'PUT') {
      const resp = await r.response();
      puts.push({ origin: new URL(r.url()).origin, status: resp && resp.status() });
    }
  });

  async function uploadFrom(origin, file) {
    await page.goto(`${origin}/`);
    await page.setInputFiles('#file', file);
    await page.click('#send');
    await page.waitForSelector('body[data-done]', { timeout: 120000 });
    return {
      done: await page.getAttribute('body', 'data-done'),
      status: await page.textContent('#status'),
    };
  }

  // The bucket's CORS rule names the page's origin; the same page from another origin
  // (localhost instead of 127.0.0.1) is refused by the browser at S3's preflight.
  const files = FILES.split(',');
  const refused = await uploadFrom(`http://localhost:${PORT}`, files[0]);
  check(refused.done === 'error', `another origin was not refused: ${JSON.stringify(refused)}`);
  check(/CORS|network/.test(refused.status), `unexpected refusal: ${refused.status}`);
  summary.refused = refused.status;
  check(puts.length === 0, `a PUT from another origin went through: ${JSON.stringify(puts)}`);

  for (const file of files) {
    const before = puts.length;
    const r = await uploadFrom(`http://127.0.0.1:${PORT}`, file);
    check(r.done === 'true', `upload of ${file} failed: ${r.status}`);
    const mine = puts.slice(before);
    check(mine.length > 0 && mine.every((p) => p.status === 200), `PUTs: ${JSON.stringify(mine)}`);
    check(mine.every((p) => p.origin !== `http://127.0.0.1:${PORT}`), 'the bytes went through the page origin');
    summary.uploads.push({ file, status: r.status, puts: mine.length, s3: mine[0].origin });
  }
} finally {
  await browser.close();
  server.kill();
}
console.log(JSON.stringify(summary));
