// A JsSIP user agent in Node.js (jssip + jssip-node-websocket), for tests/transports.rs: it
// registers over secure WebSocket (WSS) and calls TARGET, which answers; the call stays up for
// HOLD_MS and the caller hangs up. Prints one JSON object: what happened.
//
// Node.js has no WebRTC. JsSIP's media layer is given a peer connection that only writes and
// reads SDP (a fixed PCMU offer): the signalling — WebSocket, REGISTER with digest, INVITE,
// ACK, BYE — is JsSIP's own, unchanged.
//
// usage: node node_call.mjs WSS_URL CA.pem USER PASSWORD REALM DOMAIN TARGET_URI HOLD_MS
import { readFileSync } from "node:fs";
import JsSIP from "jssip";
import NodeWebSocket from "jssip-node-websocket";

const [url, caFile, user, password, realm, domain, target, holdMs] = process.argv.slice(2);

const sdp = (type) => [
  "v=0", `o=- ${Date.now()} 1 IN IP4 127.0.0.1`, "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
  "m=audio 40000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", type === "offer" ? "a=sendrecv" : "a=sendrecv", "",
].join("\r\n");

class SdpOnlyPeerConnection extends EventTarget {
  constructor() {
    super();
    this.iceGatheringState = "complete";
    this.iceConnectionState = "new";
    this.connectionState = "new";
    this.signalingState = "stable";
    this.localDescription = null;
    this.remoteDescription = null;
  }
  async createOffer() { return { type: "offer", sdp: sdp("offer") }; }
  async createAnswer() { return { type: "answer", sdp: sdp("answer") }; }
  async setLocalDescription(d) {
    this.localDescription = d;
    this.signalingState = d.type === "offer" ? "have-local-offer" : "stable";
  }
  async setRemoteDescription(d) {
    this.remoteDescription = d;
    this.signalingState = d.type === "offer" ? "have-remote-offer" : "stable";
  }
  addTrack() { return {}; }
  getSenders() { return []; }
  getReceivers() { return []; }
  getTransceivers() { return []; }
  close() { this.signalingState = "closed"; }
}
globalThis.window = globalThis;
globalThis.RTCPeerConnection = SdpOnlyPeerConnection;
globalThis.RTCSessionDescription = class { constructor(d) { Object.assign(this, d); } };

const out = { events: [] };
const done = (code) => { console.log(JSON.stringify(out)); process.exit(code); };
setTimeout(() => { out.error = "timed out"; done(1); }, 60000);

const socket = new NodeWebSocket(url, {
  clientConfig: { tlsOptions: { ca: readFileSync(caFile), servername: "localhost" } },
});
const ua = new JsSIP.UA({
  sockets: [socket],
  uri: `sip:${user}@${domain}`,
  authorization_user: user,
  password,
  realm,
  register: true,
  session_timers: false,
  user_agent: "sipmesh-test (JsSIP on Node.js)",
});
ua.on("connected", () => out.events.push("connected"));
ua.on("registrationFailed", (e) => { out.error = "registration failed: " + e.cause; done(1); });
ua.on("registered", () => {
  out.events.push("registered");
  const session = ua.call(target, {
    mediaStream: { getTracks: () => [], getAudioTracks: () => [], getVideoTracks: () => [] },
    pcConfig: { iceServers: [] },
  });
  session.on("progress", (e) => out.events.push("progress " + (e.response ? e.response.status_code : "")));
  session.on("accepted", (e) => out.events.push("accepted " + (e.response ? e.response.status_code : "")));
  session.on("confirmed", () => {
    out.events.push("confirmed");
    setTimeout(() => session.terminate(), Number(holdMs));
  });
  session.on("ended", (e) => {
    out.events.push("ended " + e.originator + " " + e.cause);
    out.ended_by = e.originator;
    ua.stop();
    setTimeout(() => done(0), 300);
  });
  session.on("failed", (e) => {
    out.error = "call failed: " + e.cause + (e.message && e.message.status_code ? " " + e.message.status_code : "");
    done(1);
  });
});
ua.start();
