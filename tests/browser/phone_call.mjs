// Two browser phones in Debian's chromium (through playwright-core), for tests/browser.rs:
// the caller's page is /phone of one node, the callee's /phone of another; both register over
// WebSocket; the caller calls, the callee answers automatically with Chromium's fake
// microphone, the call stays up, and the caller hangs up. Prints one JSON object: what each
// page showed at each step, and both users' bindings as the node at ADMIN_URL lists them while
// the pages are still open (closing the browser closes the WebSockets, which ends the bindings).
//
// usage: node phone_call.mjs CALLER_PAGE CALLEE_PAGE CALLER_USER CALLER_PW CALLEE_USER CALLEE_PW SHOT_DIR ADMIN_URL
import { launch } from "./chromium.mjs";

const [callerUrl, calleeUrl, cu, cp, eu, ep, shots, admin] = process.argv.slice(2);
const browser = await launch({ fakeMedia: true });
const out = { steps: [] };
const state = (page) => page.evaluate(() => ({
  reg: document.getElementById("reg-state").dataset.state,
  call: document.getElementById("call-state").dataset.state,
  log: [...document.querySelectorAll("#log li")].map((li) => li.textContent).slice(0, 8),
}));
// The call's audio as WebRTC reports it: ICE state and bytes of audio received.
const media = (page) => page.evaluate(async () => {
  const pc = window.sipmeshPhone.peerConnection();
  if (!pc) return null;
  let bytes = 0;
  (await pc.getStats()).forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") bytes += r.bytesReceived; });
  return { ice: pc.iceConnectionState, bytes };
});
const waitState = (page, id, want, timeout = 20000) => page.waitForFunction(
  ([id, want]) => document.getElementById(id).dataset.state === want, [id, want], { timeout });
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 640 }, permissions: ["microphone"] });
  const caller = await context.newPage();
  const callee = await context.newPage();
  for (const p of [caller, callee]) p.on("console", (m) => { if (m.type() === "error") out.steps.push("console: " + m.text()); });
  await caller.goto(callerUrl);
  await callee.goto(calleeUrl + "&autoanswer=1");
  for (const [page, user, pw] of [[caller, cu, cp], [callee, eu, ep]]) {
    await page.waitForFunction(() => document.getElementById("server").value !== "", null, { timeout: 10000 });
    await page.fill("#user", user);
    await page.fill("#password", pw);
    await page.click("#register");
    await waitState(page, "reg-state", "registered");
  }
  out.registered = { caller: await state(caller), callee: await state(callee) };
  await caller.fill("#target", eu);
  await caller.click("#call");
  await waitState(caller, "call-state", "confirmed");
  await waitState(callee, "call-state", "confirmed");
  out.up = { caller: await state(caller), callee: await state(callee) };
  // The call stays up.
  await caller.waitForTimeout(2000);
  out.still_up = { caller: await state(caller), callee: await state(callee) };
  out.media = { caller: await media(caller), callee: await media(callee) };
  await caller.screenshot({ path: shots + "/phone-caller.png" });
  await callee.screenshot({ path: shots + "/phone-callee.png" });
  await caller.click("#hangup");
  await waitState(caller, "call-state", "ended");
  await waitState(callee, "call-state", "ended");
  out.ended = { caller: await state(caller), callee: await state(callee) };
  out.bindings = {};
  for (const user of [cu, eu]) {
    out.bindings[user] = await (await fetch(`${admin}/v1/registrations/${user}`)).json();
  }
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
