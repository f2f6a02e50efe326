// Shared by the browser scripts: Debian's Chromium through playwright-core. The flags keep
// Chromium off the network it cannot reach here (background services, QUIC, updates).
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Starts a fresh headless Chromium; `extraArgs` e.g. trusts one TLS key. */
export async function launch(extraArgs = []) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'spbridge-chromium-'));
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...extraArgs,
    ],
  });
}

/** Fails the script with a message (the Rust test prints it). */
export function check(cond, message) {
  if (!cond) {
    throw new Error(`check failed: ${message}`);
  }
}

/** Phone-sized viewport (iPhone 12/13/14 logical pixels). */
export const PHONE = { width: 390, height: 844 };
