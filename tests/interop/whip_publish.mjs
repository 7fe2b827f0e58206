#!/usr/bin/env node
// A WHIP publisher (RFC 9725) for tests, on one of two independent stacks:
// werift (pure TypeScript, the default) or, with --stack ndc,
// node-datachannel (libdatachannel: the stack of OBS's WHIP output). It
// forwards the RTP packets it receives on a UDP port (from ffmpeg, say)
// into a sendonly video track (--codec vp8, vp9 or h264), and opens a data
// channel `data` on which it sends numbered messages. With --audio it also
// has an Opus track, fed from a second UDP port.
//
// With --codec av1 (ndc only) ffmpeg cannot packetize, so the publisher
// reads the IVF file --ivf FILE and packetizes it with libdatachannel's own
// AV1 packetizer (one temporal unit per frame, as OBS does), at the file's
// pace, once, from when its track opens.
//
// It POSTs its offer (with every candidate: no trickle) to WHIP_URL, and
// prints on stdout, one per line:
//   rtp-port: P          where to send video RTP (before anything else)
//   audio-rtp-port: P    where to send Opus RTP (with --audio)
//   status: N            the POST's HTTP status, then on 201 `location: URL`
//                        and `etag: TAG` (the ETag header as sent)
//   ready                when its tracks are open: what is sent from now on
//                        is not dropped here
//   channel-open         when the data channel opened; the messages follow,
//                        from --messages-at MS after the start on
// and after --seconds (when it DELETEs the session unless --keep) ONE line of
// JSON: {"status":N,"location":L,"connected_ms":T,"channel_open_ms":T,
// "ready_ms":T,"sent":M,"rtp_in":R,"frames_out":F,"delete_status":N|null}. With a status other than 201
// it prints the summary at once and exits 0: the test judges the status.
//
// With --restart-at MS (werift) it restarts ICE then (RFC 9725 §4.3.3): a
// PATCH with its new credentials and candidates, `If-Match: "*"`; it
// prints `restart: N` (the status) and applies the fragment it got back.
//
// Usage: node whip_publish.mjs WHIP_URL [--stack werift|ndc] [--token T]
//          [--codec vp8|vp9|h264|av1] [--ivf FILE] [--audio] [--messages N] [--messages-at MS] [--prefix P] [--seconds S] [--keep]
//          [--verbose]

import dgram from 'node:dgram';
import { performance } from 'node:perf_hooks';
import nodeDataChannel from 'node-datachannel';
import { readFileSync } from 'node:fs';
import { MediaStreamTrack, RTCPeerConnection, useH264, useNACK, useOPUS, usePLI, useVP8, useVP9 } from 'werift';

const USAGE =
  'usage: node whip_publish.mjs WHIP_URL [--stack werift|ndc] [--token T] [--codec vp8|vp9|h264|av1] [--ivf FILE] ' +
  '[--audio] [--messages N] ' +
  '[--messages-at MS] [--prefix P] [--seconds S] [--keep] [--verbose]';

function parseArgs(argv) {
  const opts = { restartAt: null, stack: 'werift', token: null, codec: 'vp8', ivf: null, audio: false, messages: 0, messagesAt: 0, prefix: 'pub', seconds: 10, keep: false, verbose: false };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--token') opts.token = val();
    else if (a === '--stack') opts.stack = val();
    else if (a === '--restart-at') opts.restartAt = Number(val());
    else if (a === '--codec') opts.codec = val();
    else if (a === '--ivf') opts.ivf = val();
    else if (a === '--audio') opts.audio = true;
    else if (a === '--messages') opts.messages = Number(val());
    else if (a === '--messages-at') opts.messagesAt = Number(val());
    else if (a === '--prefix') opts.prefix = val();
    else if (a === '--seconds') opts.seconds = Number(val());
    else if (a === '--keep') opts.keep = true;
    else if (a === '--verbose' || a === '-v') opts.verbose = true;
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else pos.push(a);
  }
  if (pos.length !== 1) throw new Error('WHIP_URL is required');
  [opts.url] = pos;
  if (!['vp8', 'vp9', 'h264', 'av1'].includes(opts.codec)) throw new Error('--codec must be vp8, vp9, h264 or av1');
  if (!['werift', 'ndc'].includes(opts.stack)) throw new Error('--stack must be werift or ndc');
  if ((opts.codec === 'av1') !== (opts.ivf !== null)) throw new Error('--ivf FILE goes with --codec av1, and only with it');
  if (opts.codec === 'av1' && opts.stack !== 'ndc') throw new Error('--codec av1 needs --stack ndc (its packetizer)');
  if (!(opts.seconds > 0)) throw new Error('--seconds must be positive');
  return opts;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  console.error(`whip_publish: ${err.message}\n${USAGE}`);
  process.exit(2);
}

const t0 = performance.now();
const ms = () => Math.round(performance.now() - t0);
const log = (...a) => console.error(`[whip ${opts.stack} +${ms()}ms]`, ...a);
const vlog = (...a) => opts.verbose && log(...a);
const out = (line) => process.stdout.write(line + '\n');
const summary = {
  status: null,
  location: null,
  connected_ms: null,
  channel_open_ms: null,
  ready_ms: null,
  sent: 0,
  rtp_in: 0,
  frames_out: 0,
  delete_status: null,
};
const auth = opts.token ? { Authorization: `Bearer ${opts.token}` } : {};

// What the rest needs of a stack: a complete offer (every candidate in it),
// the answer applied, RTP written to each track (or, for AV1, frames to
// the packetizer), and the channel.
function werift() {
  const feedback = [useNACK(), usePLI()];
  const use = { vp8: useVP8, vp9: useVP9, h264: useH264 }[opts.codec];
  const pc = new RTCPeerConnection({
    codecs: { video: [use({ rtcpFeedback: feedback })], audio: [useOPUS()] },
    iceAdditionalHostAddresses: ['127.0.0.1'],
    iceUseIpv6: false,
  });
  pc.connectionStateChange.subscribe((s) => {
    onState(s);
    if (s === 'connected') onReady();
  });
  const video = new MediaStreamTrack({ kind: 'video' });
  pc.addTransceiver(video, { direction: 'sendonly' });
  const audio = opts.audio ? new MediaStreamTrack({ kind: 'audio' }) : null;
  if (audio) pc.addTransceiver(audio, { direction: 'sendonly' });
  const dc = pc.createDataChannel('data');
  dc.stateChanged.subscribe((s) => s === 'open' && onChannelOpen());
  return {
    async offer() {
      await pc.setLocalDescription(await pc.createOffer());
      if (pc.iceGatheringState !== 'complete') {
        await new Promise((resolve) => pc.iceGatheringStateChange.subscribe((s) => s === 'complete' && resolve()));
      }
      return pc.localDescription.sdp;
    },
    answer: (sdp) => pc.setRemoteDescription({ type: 'answer', sdp }),
    async restartOffer() {
      const gathered = new Promise((resolve) =>
        pc.iceGatheringStateChange.subscribe((s) => s === 'complete' && resolve()),
      );
      await pc.setLocalDescription(await pc.createOffer({ iceRestart: true }));
      await Promise.race([gathered, new Promise((r) => setTimeout(r, 2000))]);
      return pc.localDescription.sdp;
    },
    writeRtp: (buf) => video.writeRtp(buf),
    writeAudioRtp: (buf) => audio.writeRtp(buf),
    send: (text) => dc.send(text),
    close: () => pc.close(),
  };
}

function ndc() {
  const pc = new nodeDataChannel.PeerConnection('whip', {
    iceServers: [],
    bindAddress: '127.0.0.1',
    enableIceTcp: false,
  });
  pc.onStateChange((s) => onState(s));
  // Before any track or channel: libdatachannel negotiates on its own
  // thread as soon as one is added.
  const gathered = new Promise((resolve) => pc.onGatheringStateChange((s) => s === 'complete' && resolve()));
  const open = [];
  const sendonly = (media, add, ssrc, pt, name) => {
    add(pt);
    media.addSSRC(ssrc, name, 'stream', name);
    const track = pc.addTrack(media);
    open.push(new Promise((resolve) => track.onOpen(resolve)));
    return {
      track,
      // As announced: libdatachannel sends the bytes it is given.
      writeRtp(buf) {
        buf.writeUInt32BE(ssrc, 8);
        buf[1] = (buf[1] & 0x80) | pt;
        if (track.isOpen()) track.sendMessageBinary(buf);
      },
    };
  };
  const v = new nodeDataChannel.Video('0', 'SendOnly');
  const addVideo = { vp8: (pt) => v.addVP8Codec(pt), vp9: (pt) => v.addVP9Codec(pt), h264: (pt) => v.addH264Codec(pt), av1: (pt) => v.addAV1Codec(pt) }[opts.codec];
  const video = sendonly(v, addVideo, 0x5eed0001, 96, 'video');
  let config = null;
  if (opts.codec === 'av1') {
    config = new nodeDataChannel.RtpPacketizationConfig(0x5eed0001, 'video', 96, 90000);
    const packetizer = new nodeDataChannel.AV1RtpPacketizer('TemporalUnit', config);
    packetizer.addToChain(new nodeDataChannel.RtcpNackResponder());
    video.track.setMediaHandler(packetizer);
  }
  let audio = null;
  if (opts.audio) {
    const a = new nodeDataChannel.Audio('1', 'SendOnly');
    audio = sendonly(a, (pt) => a.addOpusCodec(pt), 0x5eed0002, 111, 'audio');
  }
  Promise.all(open).then(onReady);
  const dc = pc.createDataChannel('data');
  dc.onOpen(() => onChannelOpen());
  return {
    async offer() {
      pc.setLocalDescription();
      if (pc.gatheringState() !== 'complete') await gathered;
      return pc.localDescription().sdp;
    },
    answer: async (sdp) => pc.setRemoteDescription(sdp, 'answer'),
    writeRtp: (buf) => video.writeRtp(buf),
    writeAudioRtp: (buf) => audio.writeRtp(buf),
    // One temporal unit, through the packetizer, at RTP time `ts`.
    sendFrame(frame, ts) {
      config.timestamp = ts >>> 0;
      video.track.sendMessageBinary(frame);
    },
    send: (text) => dc.sendMessage(text),
    async close() {
      pc.close();
      nodeDataChannel.cleanup();
    },
  };
}

// An IVF file's frames, with their times in 1/90000 s.
function ivfFrames(path) {
  const b = readFileSync(path);
  if (b.length < 32 || b.toString('latin1', 0, 4) !== 'DKIF') throw new Error(`${path}: not an IVF file`);
  const rate = b.readUInt32LE(16);
  const scale = b.readUInt32LE(20);
  const frames = [];
  for (let at = b.readUInt16LE(6); at + 12 <= b.length; ) {
    const size = b.readUInt32LE(at);
    const pts = Number(b.readBigUInt64LE(at + 4));
    if (at + 12 + size > b.length) throw new Error(`${path}: frame at byte ${at} is cut short`);
    frames.push({ data: b.subarray(at + 12, at + 12 + size), ts: Math.round((pts * 90000 * scale) / rate) });
    at += 12 + size;
  }
  return frames;
}

// Sends the file's frames at their times, from now.
function playIvf(frames) {
  const start = performance.now();
  const base = 0x1000;
  let i = 0;
  const next = () => {
    while (i < frames.length && (frames[i].ts / 90) <= performance.now() - start) {
      peer.sendFrame(frames[i].data, base + frames[i].ts);
      summary.frames_out = ++i;
    }
    if (i < frames.length) setTimeout(next, 5);
  };
  next();
}

function onReady() {
  if (summary.ready_ms !== null) return;
  summary.ready_ms = ms();
  out('ready');
  if (opts.ivf !== null) playIvf(ivfFrames(opts.ivf));
}

function onState(s) {
  log(`connection ${s}`);
  if (s === 'connected' && summary.connected_ms === null) summary.connected_ms = ms();
}

function onChannelOpen() {
  if (summary.channel_open_ms !== null) return;
  summary.channel_open_ms = ms();
  out('channel-open');
  let i = 0;
  const next = () => {
    if (i >= opts.messages) return;
    peer.send(`${opts.prefix}-${String(i).padStart(4, '0')}`);
    summary.sent = ++i;
    setTimeout(next, 2);
  };
  setTimeout(next, Math.max(0, opts.messagesAt - ms()));
}

const peer = opts.stack === 'ndc' ? ndc() : werift();

// The first section's ICE lines of a description, as a fragment.
function iceFragment(sdp) {
  const lines = sdp.split(/\r?\n/);
  const first = (p) => lines.find((l) => l.startsWith(p));
  const frag = [first('a=ice-ufrag:'), first('a=ice-pwd:'), first('m='), first('a=mid:')];
  frag.push(...new Set(lines.filter((l) => l.startsWith('a=candidate:'))), 'a=end-of-candidates');
  return frag.filter(Boolean).join('\r\n') + '\r\n';
}

// Restarts ICE through the session URL; returns the answer updated with
// the server's new fragment.
async function restartIce(answer) {
  const offer = await peer.restartOffer();
  const res = await fetch(summary.location, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/trickle-ice-sdpfrag', 'If-Match': '*', ...auth },
    body: iceFragment(offer),
  });
  out(`restart: ${res.status}`);
  const frag = await res.text();
  if (res.status !== 200) {
    log(`restart refused: ${frag.trim()}`);
    return answer;
  }
  vlog(`restart answer:\n${frag}`);
  const flines = frag.split(/\r?\n/);
  const get = (p) => flines.find((l) => l.startsWith(p));
  const candidates = flines.filter((l) => l.startsWith('a=candidate:'));
  const updated = [];
  let section = -1;
  for (const line of answer.split(/\r?\n/)) {
    if (line.startsWith('m=')) section++;
    if (line.startsWith('a=candidate:') || line.startsWith('a=end-of-candidates')) continue;
    if (line.startsWith('a=ice-ufrag:')) updated.push(get('a=ice-ufrag:'));
    else if (line.startsWith('a=ice-pwd:')) updated.push(get('a=ice-pwd:'));
    else if (line !== '') updated.push(line);
    if (line.startsWith('a=mid:') && section === 0) updated.push(...candidates, 'a=end-of-candidates');
  }
  const sdp = updated.join('\r\n') + '\r\n';
  await peer.answer(sdp);
  return sdp;
}

// A UDP port whose RTP goes to `write`.
async function rtpIn(write) {
  const udp = dgram.createSocket('udp4');
  udp.on('message', (msg) => {
    summary.rtp_in++;
    write(msg);
  });
  await new Promise((resolve) => udp.bind(0, '127.0.0.1', resolve));
  return udp;
}
const udp = await rtpIn((msg) => peer.writeRtp(msg));
out(`rtp-port: ${udp.address().port}`);
const audioUdp = opts.audio ? await rtpIn((msg) => peer.writeAudioRtp(msg)) : null;
if (audioUdp) out(`audio-rtp-port: ${audioUdp.address().port}`);

function finish() {
  out(JSON.stringify(summary));
  udp.close();
  audioUdp?.close();
  Promise.resolve(peer.close()).finally(() => process.exit(0));
}

const offer = await peer.offer();
vlog(`offer:\n${offer}`);
let res;
try {
  res = await fetch(opts.url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', ...auth },
    body: offer,
  });
} catch (err) {
  log(`POST failed: ${err.message}`);
  out('status: 0');
  finish();
}
summary.status = res.status;
out(`status: ${res.status}`);
const body = await res.text();
if (res.status !== 201) {
  log(`refused: ${body.trim()}`);
  finish();
} else {
  summary.location = new URL(res.headers.get('location'), opts.url).toString();
  out(`location: ${summary.location}`);
  out(`etag: ${res.headers.get('etag')}`);
  vlog(`answer:\n${body}`);
  await peer.answer(body);
  let answer = body;
  if (opts.restartAt !== null) {
    setTimeout(async () => {
      try {
        answer = await restartIce(answer);
      } catch (err) {
        log(`ICE restart failed: ${err.stack ?? err}`);
      }
    }, Math.max(0, opts.restartAt - ms()));
  }
  setTimeout(async () => {
    if (!opts.keep) {
      try {
        const del = await fetch(summary.location, { method: 'DELETE', headers: auth });
        summary.delete_status = del.status;
      } catch (err) {
        log(`DELETE failed: ${err.message}`);
      }
    }
    finish();
  }, opts.seconds * 1000);
}
