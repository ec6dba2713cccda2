// Drives Debian's chromium (through playwright-core) over the live mesh page, for
// tests/browser.rs. Prints one JSON object: what the page showed.
//
// usage: node mesh_page.mjs URL SCREENSHOT.png USER TOKEN BANNED_IP
//   USER       a user to locate on the ring
//   TOKEN      the admin token, typed into the page after the read-only checks
//   BANNED_IP  a banned source whose ban the page lifts in admin mode
import { launch } from "./chromium.mjs";

const [url, screenshot, user, token, banned] = process.argv.slice(2);
const browser = await launch();
const out = {};
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("dialog", (d) => d.accept());
  await page.goto(url);
  // Two live updates: the rates have a previous sample.
  await page.waitForFunction(() => Number(document.body.dataset.updates || 0) >= 3, null, { timeout: 30000 });
  const read = () => page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent.trim();
    const rows = [...document.querySelectorAll("#members tbody tr")].map((tr) => ({
      peer_id: tr.dataset.peer,
      state: tr.dataset.state,
      registrations: Number(tr.querySelector('[data-field="registrations"]').textContent),
      dialogs: Number(tr.querySelector('[data-field="dialogs"]').textContent),
      local: tr.classList.contains("local"),
    }));
    return {
      members_up: Number(text("members-up")),
      registrations: Number(text("registrations")),
      dialogs: Number(text("dialogs")),
      majority: text("majority"),
      rate_register: text("rate-register"),
      members: rows,
      ring_dots: document.querySelectorAll("#ring circle[data-peer]").length,
      bans: [...document.querySelectorAll("#bans tbody tr")].map((tr) => tr.dataset.source),
      events: [...document.querySelectorAll("#events li")].map((li) => li.dataset.kind),
      lift_buttons_visible: [...document.querySelectorAll("button[data-lift]")].filter((b) => b.offsetParent !== null).length,
      admin: document.body.classList.contains("admin"),
    };
  });
  // Let the member tags (published every 2 s) catch up with the node's own counts.
  await page.waitForTimeout(2500);
  out.read_only = await read();
  // Locate a user: its replicas are highlighted, its binding's owner named.
  await page.fill("#lookup", user);
  await page.click("#lookup-form button");
  await page.waitForSelector("#lookup-owners", { timeout: 10000 });
  out.lookup = await page.textContent("#lookup-result");
  out.highlighted = await page.evaluate(() => document.querySelectorAll("#ring circle.hl").length);
  await page.screenshot({ path: screenshot, fullPage: true });
  // Admin mode: the token unlocks the lift button; lifting removes the ban at the node.
  await page.fill("#token", token);
  await page.click("#token-form button");
  await page.waitForFunction(() => document.body.classList.contains("admin"));
  const lift = page.locator(`button[data-lift="${banned}"]`);
  await lift.waitFor({ state: "visible", timeout: 10000 });
  await lift.click();
  await page.waitForFunction((ip) => !document.querySelector(`#bans tr[data-source="${ip}"]`), banned, { timeout: 10000 });
  out.admin = await read();
  out.foreign_requests = requests.filter((r) => !r.startsWith(new URL(url).origin));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
