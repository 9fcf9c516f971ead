// A phished user, played by a real browser: opens URL in headless Chromium and clicks every
// button and same-origin link the page offers, round after round, until nothing new is left
// (bounded). Prints one JSON line: what it clicked, the page's final text, the cookies the
// browser holds for the page's origin (names and flags, never values).
//
//   CHROMIUM=/usr/bin/chromium node click_everything.mjs URL
import { chromium } from "playwright-core";

const url = process.argv[2];
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // The machine has no network but loopback: keep Chromium from reaching out on its own.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const clicked = [];
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(url, { waitUntil: "networkidle", timeout: 20000 });
  const origin = new URL(url).origin;
  const done = new Set();
  for (let round = 0; round < 10; round++) {
    const targets = page.locator("button, input[type=submit], input[type=button], a[href]");
    const n = await targets.count();
    let progressed = false;
    for (let i = 0; i < n; i++) {
      const t = targets.nth(i);
      if (!(await t.isVisible()) || !(await t.isEnabled())) continue;
      const label = ((await t.innerText().catch(() => "")) || (await t.getAttribute("value")) || "").trim();
      const href = await t.getAttribute("href");
      const key = `${label}|${href}`;
      if (done.has(key)) continue;
      done.add(key);
      if (href && new URL(href, page.url()).origin !== origin) continue;
      await t.click({ timeout: 5000 });
      clicked.push(label || href);
      progressed = true;
      await page.waitForLoadState("networkidle", { timeout: 10000 }).catch(() => {});
      await page.waitForTimeout(300);
    }
    if (!progressed) break;
  }
  const text = await page.locator("body").innerText();
  const cookies = (await context.cookies(origin)).map((c) => ({
    name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path,
  }));
  console.log(JSON.stringify({ clicked, text, cookies, final_url: page.url() }));
} finally {
  await browser.close();
}
