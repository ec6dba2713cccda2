// One browser phone in Debian's chromium (through playwright-core), for tests/browser.rs: the
// page registers over WebSocket and calls a UDP phone; the UDP phone answers, then hangs up.
// Prints one JSON object: the page's states.
//
// usage: node phone_to_udp.mjs PAGE USER PASSWORD CALLEE SHOT.png
import { launch } from "./chromium.mjs";

const [url, user, pw, callee, shot] = process.argv.slice(2);
const browser = await launch({ fakeMedia: true });
const out = {};
const state = (page) => page.evaluate(() => ({
  reg: document.getElementById("reg-state").dataset.state,
  call: document.getElementById("call-state").dataset.state,
}));
const waitState = (page, id, want, timeout = 20000) => page.waitForFunction(
  ([id, want]) => document.getElementById(id).dataset.state === want, [id, want], { timeout });
try {
  const context = await browser.newContext({ permissions: ["microphone"] });
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("server").value !== "", null, { timeout: 10000 });
  await page.fill("#user", user);
  await page.fill("#password", pw);
  await page.click("#register");
  await waitState(page, "reg-state", "registered");
  await page.fill("#target", callee);
  await page.click("#call");
  await waitState(page, "call-state", "confirmed");
  out.up = await state(page);
  // The UDP phone hangs up.
  await waitState(page, "call-state", "ended", 30000);
  out.ended = await state(page);
  await page.screenshot({ path: shot });
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
