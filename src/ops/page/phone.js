// The browser phone: JsSIP over this node's WebSocket listener. Registers a user of the mesh,
// calls another, answers (by hand or automatically), hangs up. Its state is in #reg-state and
// #call-state (data-state), which the browser test reads.
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let config = null;
let ua = null;
let session = null;

function log(text) {
  const li = document.createElement('li');
  li.textContent = new Date().toISOString().slice(11, 19) + '  ' + text;
  $('log').prepend(li);
  while ($('log').children.length > 50) $('log').lastChild.remove();
}

function setState(id, state, text) {
  $(id).dataset.state = state;
  $(id).textContent = text || state;
}

function buttons() {
  const registered = $('reg-state').dataset.state === 'registered';
  const call = $('call-state').dataset.state;
  $('unregister').disabled = !ua;
  $('call').disabled = !registered || !!session;
  $('answer').disabled = !(session && call === 'ringing');
  $('hangup').disabled = !session;
}

async function loadConfig() {
  const r = await fetch('/phone/config.json', { cache: 'no-store' });
  config = await r.json();
  $('node-name').textContent = config.node;
  const host = location.hostname.includes(':') ? '[' + location.hostname + ']' : location.hostname;
  const scheme = location.protocol === 'https:' && config.wss ? 'wss' : (config.ws ? 'ws' : 'wss');
  const port = scheme === 'wss' ? config.wss : config.ws;
  $('server').value = params.get('server') || (port ? scheme + '://' + host + ':' + port : '');
  if (!port && !params.get('server')) log('this node has no WebSocket listener (--sip-ws-listen)');
  for (const k of ['user', 'password', 'target']) if (params.get(k)) $(k).value = params.get(k);
  $('auto-answer').checked = params.get('autoanswer') === '1';
}

function uri(user) {
  return user.includes('@') ? 'sip:' + user.replace(/^sips?:/, '') : 'sip:' + user + '@' + config.domain;
}

function track(s) {
  session = s;
  const who = s.remote_identity && s.remote_identity.uri ? s.remote_identity.uri.toString() : '';
  $('peer').textContent = (s.direction === 'incoming' ? 'from ' : 'to ') + who;
  setState('call-state', s.direction === 'incoming' ? 'ringing' : 'calling');
  s.on('progress', () => { if (s.direction === 'outgoing') setState('call-state', 'ringing'); buttons(); });
  s.on('accepted', () => { setState('call-state', 'answered'); buttons(); });
  s.on('confirmed', () => { setState('call-state', 'confirmed', 'in call'); log('call up'); buttons(); });
  s.on('peerconnection', (e) => {
    e.peerconnection.addEventListener('track', (t) => { $('remote').srcObject = t.streams[0]; });
  });
  const end = (what) => (e) => {
    log('call ' + what + (e && e.cause ? ': ' + e.cause : ''));
    setState('call-state', what);
    session = null;
    $('peer').textContent = '';
    buttons();
  };
  s.on('ended', end('ended'));
  s.on('failed', end('failed'));
  if (s.direction === 'outgoing' && s.connection) {
    s.connection.addEventListener('track', (t) => { $('remote').srcObject = t.streams[0]; });
  }
  buttons();
}

const mediaOptions = () => ({
  mediaConstraints: { audio: true, video: false },
  pcConfig: { iceServers: [] },
});

function register(ev) {
  ev.preventDefault();
  if (ua) ua.stop();
  const user = $('user').value.trim();
  const socket = new JsSIP.WebSocketInterface($('server').value.trim());
  ua = new JsSIP.UA({
    sockets: [socket],
    uri: uri(user),
    authorization_user: user,
    password: $('password').value,
    realm: config.realm,
    register: true,
    register_expires: 300,
    session_timers: false,
    user_agent: 'sipmesh-phone (JsSIP)',
  });
  ua.on('connecting', () => setState('reg-state', 'connecting'));
  ua.on('disconnected', () => { setState('reg-state', 'disconnected'); buttons(); });
  ua.on('registered', () => { setState('reg-state', 'registered'); log('registered as ' + uri(user)); buttons(); });
  ua.on('unregistered', () => { setState('reg-state', 'unregistered'); buttons(); });
  ua.on('registrationFailed', (e) => {
    setState('reg-state', 'failed', 'failed: ' + (e.cause || ''));
    log('registration failed: ' + (e.response ? e.response.status_code + ' ' + e.response.reason_phrase : e.cause));
    buttons();
  });
  ua.on('newRTCSession', (e) => {
    if (session) { if (e.originator === 'remote') e.session.terminate({ status_code: 486 }); return; }
    track(e.session);
    if (e.originator === 'remote') {
      log('incoming call from ' + e.session.remote_identity.uri);
      if ($('auto-answer').checked) e.session.answer(mediaOptions());
    }
  });
  ua.start();
  buttons();
}

$('account').addEventListener('submit', register);
$('unregister').addEventListener('click', () => { if (ua) { ua.stop(); ua = null; } setState('reg-state', 'unregistered'); buttons(); });
$('dial').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const target = $('target').value.trim();
  if (!ua || !target) return;
  log('calling ' + uri(target));
  ua.call(uri(target), mediaOptions());
});
$('answer').addEventListener('click', () => { if (session) session.answer(mediaOptions()); });
$('hangup').addEventListener('click', () => { if (session) session.terminate(); });

// For operators' scripts and the browser test: the call's peer connection, if any.
window.sipmeshPhone = { peerConnection: () => (session ? session.connection : null) };

loadConfig().then(buttons).catch((e) => log('cannot read this node\'s phone settings: ' + e));
