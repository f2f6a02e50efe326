// Sign-in in a real browser: /connect with an operator's link → the emulator's Microsoft sign-in
// page → /callback → the result page; then a replayed callback and a refused sign-in.
// Env: BASE (oauth-callback), LINK and LINK2 (connect paths with invites), COOKIE (the nonce
// cookie's expected name), SPKI (optional: trust this TLS key), SHOTS (screenshot directory).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { launch, check, PHONE } from './lib.mjs';

const { BASE, LINK, LINK2, COOKIE, SPKI } = process.env;
const SHOTS = process.env.SHOTS;
const tag = BASE.startsWith('https:') ? 'tls' : 'http';
const browser = await launch(SPKI ? [`--ignore-certificate-errors-spki-list=${SPKI}`] : []);
const summary = {};

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

// Every page must read on a phone without sideways scrolling.
async function fitsPhone(page, name) {
  await page.setViewportSize(PHONE);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `${name} scrolls sideways by ${overflow}px on a phone`);
  await shot(page, `${name}-phone`);
  await page.setViewportSize({ width: 1024, height: 700 });
}

try {
  const page = await browser.newPage();
  await page.setViewportSize({ width: 1024, height: 700 });
  let connectCookie = null;
  page.on('response', async (r) => {
    if (r.url().startsWith(`${BASE}/connect/`)) connectCookie = await r.headerValue('set-cookie');
  });

  // 1. The operator's link leads to Microsoft's (the emulator's) sign-in page.
  await page.goto(`${BASE}${LINK}`);
  await page.waitForSelector('#accept');
  check(connectCookie && connectCookie.startsWith(`${COOKIE}=`), `/connect set ${connectCookie}`);
  check(/HttpOnly/i.test(connectCookie), 'the nonce cookie is HttpOnly');
  if (tag === 'tls') check(/;\s*Secure/i.test(connectCookie), 'the __Host- cookie is Secure');
  const jar = await browser.cookies(BASE);
  const nonce = jar.find((c) => c.name === COOKIE);
  check(nonce, `the browser kept ${COOKIE} (it has ${jar.map((c) => c.name).join(', ') || 'none'})`);
  summary.account = await page.textContent('#account');

  // 2. Accept: back to /callback, which shows the result page.
  const [done] = await Promise.all([
    page.waitForNavigation({ url: (u) => u.pathname === '/callback' }),
    page.click('#accept'),
  ]);
  check(done.status() === 200, `/callback answered ${done.status()}: ${await page.content()}`);
  check((await page.textContent('h1')) === 'Connected', 'the result page says Connected');
  summary.connected = await page.textContent('main, body');
  const after = await browser.cookies(BASE);
  check(!after.some((c) => c.name === COOKIE && c.value), 'the nonce cookie is cleared after use');
  await shot(page, `signin-connected-${tag}`);
  await fitsPhone(page, `signin-connected-${tag}`);
  const callbackUrl = page.url();

  // 3. The same callback again, even with the nonce cookie put back: refused as a replay.
  await browser.addCookies([nonce]);
  const replay = await page.goto(callbackUrl);
  summary.replay_status = replay.status();
  check((await page.textContent('h1')) === 'Sign-in failed', 'a replay shows the error page');
  summary.replay_text = await page.textContent('body');
  await shot(page, `signin-replayed-${tag}`);

  // 4. A user who cancels on Microsoft's page gets a clear error page.
  const page2 = await browser.newPage();
  await page2.goto(`${BASE}${LINK2}`);
  await page2.waitForSelector('#cancel');
  const [refused] = await Promise.all([
    page2.waitForNavigation({ url: (u) => u.pathname === '/callback' }),
    page2.click('#cancel'),
  ]);
  summary.refused_status = refused.status();
  check((await page2.textContent('h1')) === 'Sign-in failed', 'a refusal shows the error page');
  summary.refused_text = await page2.textContent('body');
  await page2.setViewportSize({ width: 1024, height: 700 });
  await shot(page2, `signin-refused-${tag}`);
  await fitsPhone(page2, `signin-refused-${tag}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(summary));
