// Launches Debian's chromium for the browser drivers (through playwright-core): headless, no
// sandbox (the tests run as root), and none of the background networking this box refuses.
// `fakeMedia`: a fake microphone and camera, allowed without asking, and host ICE candidates
// as plain addresses (no mDNS on this box).
import { chromium } from "playwright-core";

export function launch({ fakeMedia = false } = {}) {
  const args = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ];
  if (fakeMedia) {
    args.push(
      "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--autoplay-policy=no-user-gesture-required",
    );
  }
  return chromium.launch({
    executablePath: process.env.SIPMESH_CHROMIUM || "/usr/bin/chromium",
    args,
  });
}
