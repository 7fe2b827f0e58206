#!/usr/bin/env node
// A werift (pure TypeScript WebRTC) member of a peer-tree-relay tree, for
// interop tests; with `--stack ndc` the leaf is node-datachannel
// (libdatachannel) instead, with `--stack wrtc` @roamhq/wrtc (libwebrtc,
// Chromium's stack), which gives decoded pictures rather than RTP: with
// --frames-out FILE it writes, per picture, `WIDTHxHEIGHT MD5` of its I420
// planes. It joins a tree as a leaf (k 0) by the signalling protocol
// (signalling/PROTOCOL.md, version 1), answers every offer its parent sends
// (the parent always offers, rule 1), trickles its candidates in the
// browser's forms, counts the RTP packets of the video track(s) and records
// every data-channel message. After --seconds it prints ONE line of JSON on
// stdout and exits 0:
//
//   {"packets":N,"messages":M,"first_packet_ms":T|null,"channel_open_ms":T|null}
//
// Before it, when the first data channel opens, it prints the line
// `channel-open`, so a test knows when messages sent now will be received.
//
// With `--create` (TREE_ID is then `-`) it is the tree's source instead: it
// creates the tree and prints `tree: ID`, offers each child a video track
// and a data channel `data`, on which it sends --send N numbered messages
// (PREFIX-0000...) from --send-at MS after its start, and prints
// `child-open` when its first child can take media. On werift and ndc it
// then prints `rtp-port: P` and feeds the VP8 track with the RTP it
// receives on that UDP port (from ffmpeg, say). On wrtc, libwebrtc encodes:
// from `child-open` on it paints --frames N numbered 320x240 pictures at
// 30 frames/s, picture i showing i in binary as 10 vertical stripes (32
// pixels each, most significant first, white for 1, black for 0), which
// survive any encoder. Its summary then counts RTP packets in (or
// pictures painted) and messages sent.
//
// With --rtp-out FILE it also writes every RTP packet it received, as it
// arrived (after SRTP), each behind a 2-byte big-endian length, for the
// test to reassemble and compare with what the source sent.
//
// Times are milliseconds since the process started. Diagnostics go to stderr
// (more with --verbose; werift's own with DEBUG=werift*).
//
// Usage: node leaf.mjs WS_URL TREE_ID [--seconds N] [--k N] [--role peer]
//          [--kind video|audio|all] [--messages FILE] [--rtp-out FILE] [--host ADDR]...
//          [--verbose]
//        node leaf.mjs WS_URL - --create [--stack werift|ndc|wrtc] [--k N]
//          [--send N] [--send-at MS] [--prefix P] [--frames N] [--seconds N]
//          [--host ADDR]... [--verbose]
//
// Exit codes: 0 after the summary; 1 when the signalling server could not be
// reached or refused the join (the summary is still printed); 2 usage error.

import dgram from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { createHash } from 'node:crypto';
import wrtc from '@roamhq/wrtc';
import nodeDataChannel from 'node-datachannel';
import WebSocket from 'ws';
import {
  MediaStreamTrack,
  RTCPeerConnection,
  useAV1X,
  useH264,
  useNACK,
  useOPUS,
  usePLI,
  useREMB,
  useVP8,
  useVP9,
} from 'werift';

const USAGE =
  'usage: node leaf.mjs WS_URL TREE_ID [--seconds N] [--k N] [--role peer|browser|relay] ' +
  '[--kind video|audio|all] [--messages FILE] [--rtp-out FILE] [--host ADDR]... [--verbose]\n' +
  '       node leaf.mjs WS_URL - --create [--stack werift|ndc|wrtc] [--k N] [--send N] [--send-at MS] ' +
  '[--prefix P] [--frames N] ...';

function parseArgs(argv) {
  const opts = {
    seconds: 10,
    k: 0,
    role: 'peer',
    kind: 'video',
    messages: null,
    rtpOut: null,
    hosts: [],
    verbose: false,
    create: false,
    send: 0,
    sendAt: 0,
    prefix: 'werift',
    stack: 'werift',
    framesOut: null,
    frames: 300,
  };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--seconds') opts.seconds = Number(val());
    else if (a === '--k') opts.k = Number(val());
    else if (a === '--role') opts.role = val();
    else if (a === '--kind') opts.kind = val();
    else if (a === '--messages') opts.messages = val();
    else if (a === '--rtp-out') opts.rtpOut = val();
    else if (a === '--host') opts.hosts.push(val());
    else if (a === '--create') opts.create = true;
    else if (a === '--stack') opts.stack = val();
    else if (a === '--frames-out') opts.framesOut = val();
    else if (a === '--frames') opts.frames = Number(val());
    else if (a === '--send') opts.send = Number(val());
    else if (a === '--send-at') opts.sendAt = Number(val());
    else if (a === '--prefix') opts.prefix = val();
    else if (a === '--verbose' || a === '-v') opts.verbose = true;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else pos.push(a);
  }
  if (pos.length !== 2) throw new Error('WS_URL and TREE_ID are required');
  [opts.url, opts.tree] = pos;
  if (!/^wss?:\/\//.test(opts.url)) throw new Error('WS_URL must be ws:// or wss://');
  if (!(opts.seconds > 0)) throw new Error('--seconds must be positive');
  if (!Number.isInteger(opts.k) || opts.k < 0) throw new Error('--k must be a non-negative integer');
  if (!['video', 'audio', 'all'].includes(opts.kind)) throw new Error('--kind must be video, audio or all');
  if (!['werift', 'ndc', 'wrtc'].includes(opts.stack)) throw new Error('--stack must be werift, ndc or wrtc');
  if (!Number.isInteger(opts.frames) || opts.frames < 1 || opts.frames > 1023) {
    throw new Error('--frames must be 1..1023 (10 stripes number them)');
  }
  return opts;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  console.error(`leaf: ${err.message}\n${USAGE}`);
  process.exit(2);
}

const t0 = performance.now();
const ms = () => Math.round(performance.now() - t0);
const log = (...a) => console.error(`[leaf +${ms()}ms]`, ...a);
const vlog = (...a) => opts.verbose && log(...a);

const stats = { packets: 0, messages: 0, first_packet_ms: null, channel_open_ms: null };
// Length-prefixed RTP packets for --rtp-out, written at the end.
const rtpOut = [];
const received = []; // every data-channel message: { ms, channel, binary, data }
let exitCode = 0;
let finished = false;

// A signalling server on loopback means peers gather loopback candidates
// (the Rust members do). werift leaves internal interfaces out of its host
// candidates, so name 127.0.0.1 ourselves unless --host says otherwise.
const wsHost = new URL(opts.url).hostname;
const hostAddrs = opts.hosts.length
  ? opts.hosts
  : ['127.0.0.1', 'localhost'].includes(wsHost)
    ? ['127.0.0.1']
    : [];

// Every codec the project can send (PROTOCOL: payloads go down unchanged),
// so the answer accepts whatever the parent offers.
const videoFeedback = [useNACK(), usePLI(), useREMB()];
const codecs = {
  video: [
    useVP8({ rtcpFeedback: videoFeedback }),
    useVP9({ rtcpFeedback: videoFeedback }),
    useH264({ rtcpFeedback: videoFeedback }),
    useAV1X({ rtcpFeedback: videoFeedback }),
  ],
  audio: [useOPUS()],
};

function finish(code = exitCode) {
  if (finished) return;
  finished = true;
  clearTimeout(deadline);
  if (opts.rtpOut) {
    try {
      writeFileSync(opts.rtpOut, Buffer.concat(rtpOut));
    } catch (err) {
      log(`cannot write ${opts.rtpOut}: ${err.message}`);
    }
  }
  if (opts.framesOut) {
    try {
      writeFileSync(opts.framesOut, framesOut.map((f) => f + '\n').join(''));
    } catch (err) {
      log(`cannot write ${opts.framesOut}: ${err.message}`);
    }
  }
  if (opts.messages) {
    try {
      writeFileSync(opts.messages, received.map((m) => JSON.stringify(m)).join('\n') + (received.length ? '\n' : ''));
    } catch (err) {
      log(`cannot write ${opts.messages}: ${err.message}`);
    }
  }
  process.stdout.write(JSON.stringify(stats) + '\n', () => {
    try {
      ws?.close();
    } catch {}
    const pc = link?.ndc ? null : link?.pc;
    if (link?.ndc) {
      link.pc.close();
      nodeDataChannel.cleanup();
    }
    link = null;
    // werift's close can hang on a dead transport: do not wait for it long.
    Promise.race([pc?.close(), new Promise((r) => setTimeout(r, 300))])
      .catch(() => {})
      .finally(() => process.exit(code));
  });
}

const deadline = setTimeout(() => finish(), opts.seconds * 1000);
process.on('SIGINT', () => finish());
process.on('SIGTERM', () => finish());
process.on('unhandledRejection', (err) => log('unhandled rejection:', err?.stack ?? err));

// ---- signalling ----

let ws;
let iceServers = [];
let parent = null;
let link = null; // the upstream connection: { peer, pc, queue, early }
let earlySignals = []; // signals from a parent we have not been told of yet

function send(msg) {
  if (ws?.readyState === WebSocket.OPEN) {
    vlog('->', JSON.stringify(msg).slice(0, 200));
    ws.send(JSON.stringify(msg));
  }
}

function signal(to, data) {
  send({ type: 'signal', to, data });
}

ws = new WebSocket(opts.url);
ws.on('error', (err) => {
  log(`websocket error: ${err.message}`);
  exitCode = 1;
  finish(1);
});
ws.on('close', (code) => {
  if (!finished) log(`websocket closed (${code})`);
});
ws.on('message', (raw, isBinary) => {
  if (isBinary) return;
  let msg;
  try {
    msg = JSON.parse(raw.toString());
  } catch {
    return;
  }
  vlog('<-', raw.toString().slice(0, 200));
  switch (msg.type) {
    case 'hello':
      iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
      if (opts.create) send({ type: 'create', k: opts.k || undefined });
      else send({ type: 'join', tree: opts.tree, k: opts.k, role: opts.role });
      break;
    case 'created':
      createdTree = msg.tree;
      announce();
      break;
    case 'child-gone': {
      const c = children.get(msg.peer);
      if (c?.ndc) c.pc.close();
      else c?.pc.close().catch(() => {});
      children.delete(msg.peer);
      break;
    }
    case 'joined':
      log(`joined tree at depth ${msg.depth}, parent ${msg.parent}`);
      setParent(msg.parent);
      break;
    case 'parent':
      log(`new parent ${msg.parent} (depth ${msg.depth})`);
      setParent(msg.parent);
      break;
    case 'signal':
      if (children.has(msg.from)) onChildSignal(children.get(msg.from), msg.data ?? {});
      else onSignal(msg.from, msg.data ?? {});
      break;
    case 'child':
      if (opts.create) openChild(msg.peer);
      // A leaf (k 0) is never given children; say so rather than hang it.
      else log(`unexpected child ${msg.peer}: this member forwards nothing`);
      break;
    case 'tree-closed':
      log(`tree closed: ${msg.reason}`);
      finish();
      break;
    case 'error':
      log(`server error ${msg.code} (re ${msg.re}): ${msg.message}`);
      if (msg.re === 'join' || msg.re === 'create') {
        exitCode = 1;
        finish(1);
      }
      break;
    default:
      break;
  }
});

function setParent(peer) {
  closeLink();
  parent = peer;
  const early = earlySignals.filter((s) => s.from === peer);
  earlySignals = [];
  for (const s of early) onSignal(s.from, s.data);
}

function onSignal(from, data) {
  if (from !== parent) {
    // An offer can overtake `joined`/`parent` only if the server reorders,
    // which it does not; keep it anyway, as the browser client does.
    earlySignals.push({ from, data });
    return;
  }
  if (!link || link.peer !== from) {
    link = { ndc: openNdcLink, wrtc: openWrtcLink }[opts.stack]?.(from) ?? openLink(from);
  }
  const l = link;
  l.queue = l.queue
    .then(() => (link === l ? apply(l, data) : undefined))
    .catch((err) => log(`signalling with ${from} failed:`, err?.stack ?? err));
}

// ---- the peer connection to the parent ----

function openLink(peer) {
  const pc = new RTCPeerConnection({
    iceServers: iceServers.map((s) => ({
      urls: Array.isArray(s.urls) ? s.urls[0] : s.urls,
      username: s.username,
      credential: s.credential,
    })),
    iceAdditionalHostAddresses: hostAddrs.length ? hostAddrs : undefined,
    iceUseIpv6: hostAddrs.length ? false : true,
    codecs,
  });
  const l = { peer, pc, queue: Promise.resolve(), early: [] };

  pc.onIceCandidate.subscribe((c) => {
    if (link !== l || l.endSent) return;
    if (!c) l.endSent = true;
    signal(peer, { candidate: c ? c.toJSON() : null });
  });
  pc.iceGatheringStateChange.subscribe((s) => {
    // werift may not fire a null candidate at the end; send it ourselves.
    if (s === 'complete' && link === l && !l.endSent) {
      l.endSent = true;
      signal(peer, { candidate: null });
    }
  });
  pc.connectionStateChange.subscribe((s) => log(`connection ${s}`));
  pc.iceConnectionStateChange.subscribe((s) => vlog(`ice ${s}`));

  pc.onTrack.subscribe((track) => {
    log(`track ${track.kind}`);
    if (opts.kind !== 'all' && track.kind !== opts.kind) return;
    track.onReceiveRtp.subscribe((rtp) => link === l && gotRtp(rtp.serialize()));
  });

  pc.onDataChannel.subscribe((dc) => {
    log(`data channel "${dc.label}" announced (${dc.readyState})`);
    if (dc.readyState === 'open') channelOpened(dc.label);
    dc.stateChanged.subscribe((s) => (s === 'open' ? channelOpened(dc.label) : vlog(`channel ${dc.label} ${s}`)));
    dc.onMessage.subscribe((data) => gotMessage(dc.label, data));
  });
  return l;
}

// What any stack's leaf received.
function gotRtp(bytes) {
  stats.packets++;
  if (opts.rtpOut) {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(bytes.length);
    rtpOut.push(len, Buffer.from(bytes));
  }
  if (stats.first_packet_ms === null) {
    stats.first_packet_ms = ms();
    log('first RTP packet');
  }
}

function channelOpened(label) {
  if (stats.channel_open_ms !== null) return;
  stats.channel_open_ms = ms();
  log(`data channel "${label}" open`);
  process.stdout.write('channel-open\n');
}

function gotMessage(label, data) {
  channelOpened(label); // a message proves the channel is open
  const binary = typeof data !== 'string';
  stats.messages++;
  received.push({
    ms: ms(),
    channel: label,
    binary,
    data: binary ? Buffer.from(data).toString('base64') : data,
  });
  vlog(`message on ${label}: ${binary ? `${data.length} bytes` : JSON.stringify(data).slice(0, 120)}`);
}

// The server's ICE servers as libwebrtc (wrtc) takes them, for a leaf's
// link and for a source's children.
function wrtcIceServers() {
  return iceServers.map((s) => ({ urls: s.urls, username: s.username, credential: s.credential }));
}

// The same leaf on @roamhq/wrtc: the browser's API, so `apply` below serves
// it as it serves werift; pictures come decoded.
const framesOut = [];
function openWrtcLink(peer) {
  const pc = new wrtc.RTCPeerConnection({
    iceServers: wrtcIceServers(),
  });
  const l = { peer, pc, queue: Promise.resolve(), early: [], held: [] };
  pc.onicecandidate = (e) => {
    if (link === l) signal(peer, { candidate: e.candidate ? e.candidate.toJSON() : null });
  };
  pc.onconnectionstatechange = () => log(`connection ${pc.connectionState}`);
  pc.ontrack = (e) => {
    log(`track ${e.track.kind}`);
    if (e.track.kind !== 'video') return;
    const sink = new wrtc.nonstandard.RTCVideoSink(e.track);
    l.held.push(sink);
    sink.onframe = ({ frame }) => {
      if (link !== l) return;
      stats.frames = (stats.frames ?? 0) + 1;
      if (stats.first_frame_ms == null) stats.first_frame_ms = ms();
      const md5 = createHash('md5').update(frame.data).digest('hex');
      framesOut.push(`${frame.width}x${frame.height} ${md5}`);
    };
  };
  pc.ondatachannel = (e) => {
    const dc = e.channel;
    l.held.push(dc);
    if (dc.readyState === 'open') channelOpened(dc.label);
    dc.onopen = () => channelOpened(dc.label);
    dc.onmessage = (m) => gotMessage(dc.label, typeof m.data === 'string' ? m.data : Buffer.from(m.data));
  };
  return l;
}

// The same leaf on node-datachannel: it answers by itself once the offer is
// set, and hands over each packet of a track (RTP and RTCP) as it came.
function openNdcLink(peer) {
  const pc = new nodeDataChannel.PeerConnection(`leaf-${peer}`, {
    iceServers: iceServers.flatMap((s) => (Array.isArray(s.urls) ? s.urls : [s.urls])),
    bindAddress: hostAddrs[0],
    enableIceTcp: false,
  });
  // `held`: node-datachannel closes a track or channel whose wrapper the
  // garbage collector takes, so the link keeps them.
  const l = { peer, pc, queue: Promise.resolve(), early: [], ndc: true, held: [] };
  pc.onLocalDescription((sdp, type) => {
    if (link === l) signal(peer, { sdp: { type: type.toLowerCase(), sdp } });
  });
  pc.onLocalCandidate((candidate, mid) => {
    if (link === l) signal(peer, { candidate: { candidate, sdpMid: mid, sdpMLineIndex: 0 } });
  });
  pc.onStateChange((s) => log(`connection ${s}`));
  pc.onTrack((track) => {
    l.held.push(track);
    log(`track ${track.mid()}`);
    track.onMessage((buf) => {
      // RTCP (RFC 5761: packet types 192-223 where RTP has its marker and type).
      if (buf.length < 12 || (buf[1] >= 192 && buf[1] <= 223)) return;
      if (link === l) gotRtp(buf);
    });
  });
  pc.onDataChannel((dc) => {
    l.held.push(dc);
    const label = dc.getLabel();
    if (dc.isOpen()) channelOpened(label);
    dc.onOpen(() => channelOpened(label));
    dc.onMessage((data) => gotMessage(label, typeof data === 'string' ? data : Buffer.from(data)));
  });
  return l;
}

async function apply(l, data) {
  const pc = l.pc;
  if (l.ndc) {
    if (data.sdp?.type === 'offer') {
      pc.setRemoteDescription(data.sdp.sdp, 'offer');
      for (const c of l.early.splice(0)) pc.addRemoteCandidate(c.candidate, c.sdpMid ?? '0');
    } else if (data.candidate) {
      if (!pc.remoteDescription()) l.early.push(data.candidate);
      else pc.addRemoteCandidate(data.candidate.candidate, data.candidate.sdpMid ?? '0');
    }
    return;
  }
  if (data.sdp) {
    if (data.sdp.type !== 'offer') {
      log(`ignoring a ${data.sdp.type} from the parent: the parent offers, we answer`);
      return;
    }
    vlog(`offer:\n${data.sdp.sdp}`);
    await pc.setRemoteDescription(data.sdp);
    for (const c of l.early.splice(0)) await addCandidate(pc, c);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    const local = pc.localDescription;
    vlog(`answer:\n${local.sdp}`);
    signal(l.peer, { sdp: { type: local.type, sdp: local.sdp } });
  } else if ('candidate' in data) {
    if (!data.candidate) return; // end of candidates
    if (!pc.remoteDescription) l.early.push(data.candidate);
    else await addCandidate(pc, data.candidate);
  }
}

// ---- as the source (--create): one connection per child ----

const children = new Map(); // peer -> { peer, pc, track, queue, early }
let createdTree = null;
let rtpPort = null;

// `tree:` then `rtp-port:`, once both are known, in that order (wrtc has
// no RTP port: it encodes its own pictures).
function announce() {
  if (createdTree === null || (rtpPort === null && opts.stack !== 'wrtc')) return;
  process.stdout.write(`tree: ${createdTree}\n`);
  if (rtpPort !== null) process.stdout.write(`rtp-port: ${rtpPort}\n`);
}

// `child-open`, once: the first child can take media from now on.
let childOpen = false;
function onChildOpen() {
  if (childOpen) return;
  childOpen = true;
  process.stdout.write('child-open\n');
  if (opts.stack === 'wrtc') paintFrames();
}
let sent = 0;

if (opts.create && opts.stack !== 'wrtc') {
  stats.rtp_in = 0;
  const udp = dgram.createSocket('udp4');
  udp.on('message', (msg) => {
    stats.rtp_in++;
    for (const c of children.values()) c.writeRtp(msg);
  });
  await new Promise((resolve) => udp.bind(0, '127.0.0.1', resolve));
  rtpPort = udp.address().port;
  announce();
}
if (opts.create) {
  stats.sent = 0;
  const sendNext = () => {
    if (sent >= opts.send) return;
    const text = `${opts.prefix}-${String(sent).padStart(4, '0')}`;
    for (const c of children.values()) c.send(text);
    stats.sent = ++sent;
    setTimeout(sendNext, 2);
  };
  if (opts.send > 0) setTimeout(sendNext, Math.max(0, opts.sendAt - ms()));
}

function openChild(peer) {
  log(`child ${peer}`);
  if (opts.stack === 'ndc') openNdcChild(peer);
  else if (opts.stack === 'wrtc') openWrtcChild(peer);
  else openWeriftChild(peer);
}

// The wrtc source's pictures, one track for every child.
const WIDTH = 320;
const HEIGHT = 240;
const STRIPES = 10;
let videoSource = null;
let videoTrack = null;
function wrtcTrack() {
  if (videoTrack === null) {
    videoSource = new wrtc.nonstandard.RTCVideoSource();
    videoTrack = videoSource.createTrack();
  }
  return videoTrack;
}

// Picture i: luma white (235) or black (16) per stripe for i's bits, chroma
// grey.
function picture(i) {
  const data = new Uint8ClampedArray((WIDTH * HEIGHT * 3) / 2).fill(128);
  const stripe = WIDTH / STRIPES;
  for (let y = 0; y < HEIGHT; y++) {
    for (let x = 0; x < WIDTH; x++) {
      const bit = (i >> (STRIPES - 1 - Math.floor(x / stripe))) & 1;
      data[y * WIDTH + x] = bit ? 235 : 16;
    }
  }
  return { width: WIDTH, height: HEIGHT, data };
}

function paintFrames() {
  stats.painted = 0;
  const start = performance.now();
  const next = () => {
    if (stats.painted >= opts.frames) return;
    videoSource.onFrame(picture(stats.painted));
    stats.painted++;
    const due = start + (stats.painted * 1000) / 30;
    setTimeout(next, Math.max(0, due - performance.now()));
  };
  next();
}

async function openWrtcChild(peer) {
  const pc = new wrtc.RTCPeerConnection({
    iceServers: wrtcIceServers(),
  });
  pc.addTransceiver(wrtcTrack(), { direction: 'sendonly' });
  const dc = pc.createDataChannel('data');
  const c = {
    peer,
    pc,
    queue: Promise.resolve(),
    early: [],
    send: (text) => dc.readyState === 'open' && dc.send(text),
  };
  children.set(peer, c);
  pc.onicecandidate = (e) => signal(peer, { candidate: e.candidate ? e.candidate.toJSON() : null });
  pc.onconnectionstatechange = () => {
    log(`child ${peer}: connection ${pc.connectionState}`);
    if (pc.connectionState === 'connected') onChildOpen();
  };
  await pc.setLocalDescription(await pc.createOffer());
  signal(peer, { sdp: { type: 'offer', sdp: pc.localDescription.sdp } });
}

async function openWeriftChild(peer) {
  const pc = new RTCPeerConnection({
    iceServers: iceServers.map((s) => ({
      urls: Array.isArray(s.urls) ? s.urls[0] : s.urls,
      username: s.username,
      credential: s.credential,
    })),
    iceAdditionalHostAddresses: hostAddrs.length ? hostAddrs : undefined,
    iceUseIpv6: hostAddrs.length ? false : true,
    codecs: { video: [codecs.video[0]] },
  });
  const track = new MediaStreamTrack({ kind: 'video' });
  pc.addTransceiver(track, { direction: 'sendonly' });
  const dc = pc.createDataChannel('data');
  const c = {
    peer,
    pc,
    queue: Promise.resolve(),
    early: [],
    writeRtp: (buf) => track.writeRtp(buf),
    send: (text) => dc.readyState === 'open' && dc.send(text),
  };
  children.set(peer, c);
  pc.onIceCandidate.subscribe((cand) => signal(peer, { candidate: cand ? cand.toJSON() : null }));
  pc.connectionStateChange.subscribe((s) => {
    log(`child ${peer}: connection ${s}`);
    if (s === 'connected') onChildOpen();
  });
  await pc.setLocalDescription(await pc.createOffer());
  signal(peer, { sdp: { type: 'offer', sdp: pc.localDescription.sdp } });
}

// The same source on node-datachannel: it offers by itself once it has a
// track and a channel, and sends the RTP it is given as it is.
function openNdcChild(peer) {
  const pc = new nodeDataChannel.PeerConnection(`source-${peer}`, {
    iceServers: iceServers.flatMap((s) => (Array.isArray(s.urls) ? s.urls : [s.urls])),
    bindAddress: hostAddrs[0],
    enableIceTcp: false,
  });
  // Handlers first: libdatachannel negotiates on its own thread as soon as
  // a track or channel is added, and an offer or candidate fired before its
  // handler is lost.
  pc.onStateChange((s) => log(`child ${peer}: connection ${s}`));
  pc.onLocalDescription((sdp, type) => signal(peer, { sdp: { type: type.toLowerCase(), sdp } }));
  pc.onLocalCandidate((candidate, mid) =>
    signal(peer, { candidate: { candidate, sdpMid: mid, sdpMLineIndex: 0 } }),
  );
  const ssrc = 0x5eed0002;
  const video = new nodeDataChannel.Video('0', 'SendOnly');
  video.addVP8Codec(96);
  video.addSSRC(ssrc, 'video', 'stream', 'video');
  const track = pc.addTrack(video);
  // libdatachannel drops what is sent to a track before it opens.
  track.onOpen(() => onChildOpen());
  const dc = pc.createDataChannel('data');
  const c = {
    peer,
    pc,
    ndc: true,
    queue: Promise.resolve(),
    early: [],
    // As announced: libdatachannel sends the bytes it is given.
    writeRtp(buf) {
      if (!track.isOpen()) return;
      const p = Buffer.from(buf);
      p.writeUInt32BE(ssrc, 8);
      p[1] = (p[1] & 0x80) | 96;
      track.sendMessageBinary(p);
    },
    send: (text) => dc.isOpen() && dc.sendMessage(text),
    held: [video, track, dc],
  };
  children.set(peer, c);
  pc.setLocalDescription();
}

function onChildSignal(c, data) {
  if (c.ndc) {
    if (data.sdp?.type === 'answer') {
      c.pc.setRemoteDescription(data.sdp.sdp, 'answer');
      for (const cand of c.early.splice(0)) c.pc.addRemoteCandidate(cand.candidate, cand.sdpMid ?? '0');
    } else if (data.candidate) {
      if (!c.pc.remoteDescription()) c.early.push(data.candidate);
      else c.pc.addRemoteCandidate(data.candidate.candidate, data.candidate.sdpMid ?? '0');
    }
    return;
  }
  c.queue = c.queue
    .then(async () => {
      if (data.sdp?.type === 'answer') {
        await c.pc.setRemoteDescription(data.sdp);
        for (const cand of c.early.splice(0)) await addCandidate(c.pc, cand);
      } else if (data.candidate) {
        if (!c.pc.remoteDescription) c.early.push(data.candidate);
        else await addCandidate(c.pc, data.candidate);
      }
    })
    .catch((err) => log(`signalling with child ${c.peer} failed:`, err?.stack ?? err));
}

async function addCandidate(pc, c) {
  try {
    await pc.addIceCandidate(c);
  } catch (err) {
    // One unusable candidate must not stop the others.
    log(`ignoring candidate ${c.candidate}: ${err.message}`);
  }
}

function closeLink() {
  const l = link;
  link = null;
  if (l?.ndc) l.pc.close();
  else if (l) l.pc.close().catch(() => {});
}
