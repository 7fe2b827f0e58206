#!/usr/bin/env node
// A WHEP player for tests, on werift (pure TypeScript, the default) or,
// with --stack ndc, node-datachannel (libdatachannel): it POSTs a
// receive-only offer (video, and a data section) to WHEP_URL, then records
// what the node sends for --seconds and DELETEs its session (unless --keep).
//
// stdout, one per line: `status: N` (the POST's HTTP status), `channel-open`
// when the node's data channel opened, and last ONE line of JSON:
//   {"status":N,"packets":P,"messages":M,"first_packet_ms":T,
//    "channel_open_ms":T,"delete_status":N|null}
// With --rtp-out FILE it writes every video RTP packet received, each behind
// a 2-byte big-endian length; with --messages FILE every message, one JSON
// object per line ({"channel","binary","data"}; binary data in base64), as
// leaf.mjs does. A status other than 201 ends it at once (exit 0): the test
// judges the status.
//
// Usage: node whep_play.mjs WHEP_URL [--stack werift|ndc] [--seconds S] [--rtp-out FILE]
//          [--messages FILE] [--keep] [--verbose]

import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import nodeDataChannel from 'node-datachannel';
import { RTCPeerConnection, useH264, useNACK, usePLI, useVP8, useVP9, useAV1X } from 'werift';

const USAGE =
  'usage: node whep_play.mjs WHEP_URL [--stack werift|ndc] [--seconds S] [--rtp-out FILE] [--messages FILE] [--keep] [--verbose]';

function parseArgs(argv) {
  const opts = { stack: 'werift', seconds: 10, rtpOut: null, messages: null, keep: false, verbose: false };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--seconds') opts.seconds = Number(val());
    else if (a === '--stack') opts.stack = val();
    else if (a === '--rtp-out') opts.rtpOut = val();
    else if (a === '--messages') opts.messages = val();
    else if (a === '--keep') opts.keep = true;
    else if (a === '--verbose' || a === '-v') opts.verbose = true;
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else pos.push(a);
  }
  if (pos.length !== 1) throw new Error('WHEP_URL is required');
  [opts.url] = pos;
  if (!(opts.seconds > 0)) throw new Error('--seconds must be positive');
  if (!['werift', 'ndc'].includes(opts.stack)) throw new Error('--stack must be werift or ndc');
  return opts;
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  console.error(`whep_play: ${err.message}\n${USAGE}`);
  process.exit(2);
}

const t0 = performance.now();
const ms = () => Math.round(performance.now() - t0);
const log = (...a) => console.error(`[whep +${ms()}ms]`, ...a);
const vlog = (...a) => opts.verbose && log(...a);
const out = (line) => process.stdout.write(line + '\n');
const summary = {
  status: null,
  packets: 0,
  messages: 0,
  first_packet_ms: null,
  channel_open_ms: null,
  delete_status: null,
};
const rtpOut = [];
const received = [];

function gotRtp(bytes) {
  summary.packets++;
  if (summary.first_packet_ms === null) summary.first_packet_ms = ms();
  if (opts.rtpOut) {
    const len = Buffer.alloc(2);
    len.writeUInt16BE(bytes.length);
    rtpOut.push(len, Buffer.from(bytes));
  }
}

function channelOpened() {
  if (summary.channel_open_ms === null) {
    summary.channel_open_ms = ms();
    out('channel-open');
  }
}

function gotMessage(label, data) {
  channelOpened();
  const binary = typeof data !== 'string';
  summary.messages++;
  received.push({
    channel: label,
    binary,
    data: binary ? Buffer.from(data).toString('base64') : data,
  });
}

// What the rest needs of a stack: a complete offer, the answer applied.
function werift() {
  const feedback = [useNACK(), usePLI()];
  const pc = new RTCPeerConnection({
    codecs: {
      video: [
        useVP8({ rtcpFeedback: feedback }),
        useVP9({ rtcpFeedback: feedback }),
        useH264({ rtcpFeedback: feedback }),
        useAV1X({ rtcpFeedback: feedback }),
      ],
    },
    iceAdditionalHostAddresses: ['127.0.0.1'],
    iceUseIpv6: false,
  });
  pc.connectionStateChange.subscribe((s) => log(`connection ${s}`));
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.onTrack.subscribe((track) => {
    log(`track ${track.kind}`);
    track.onReceiveRtp.subscribe((rtp) => gotRtp(rtp.serialize()));
  });
  // A channel of our own puts a data section in the offer, so the node can
  // open its channels on the association. Negotiated, on an even id: werift
  // takes the parity of its stream ids from its ICE role (as the offerer,
  // odd) instead of its DTLS role (RFC 8832 §6: the DTLS client, which it
  // is here, uses even ids), so an in-band channel of its own would take id
  // 1, the node's first (the node, DTLS server, rightly uses odd ids).
  pc.createDataChannel('whep-player', { negotiated: true, id: 0 });
  pc.onDataChannel.subscribe((dc) => {
    if (dc.readyState === 'open') channelOpened();
    dc.stateChanged.subscribe((s) => s === 'open' && channelOpened());
    dc.onMessage.subscribe((data) => gotMessage(dc.label, data));
  });
  return {
    async offer() {
      await pc.setLocalDescription(await pc.createOffer());
      if (pc.iceGatheringState !== 'complete') {
        await new Promise((resolve) => pc.iceGatheringStateChange.subscribe((s) => s === 'complete' && resolve()));
      }
      return pc.localDescription.sdp;
    },
    answer: (sdp) => pc.setRemoteDescription({ type: 'answer', sdp }),
    close: () => pc.close(),
  };
}

function ndc() {
  const pc = new nodeDataChannel.PeerConnection('whep', {
    iceServers: [],
    bindAddress: '127.0.0.1',
    enableIceTcp: false,
  });
  pc.onStateChange((s) => log(`connection ${s}`));
  // Before any track or channel: libdatachannel negotiates on its own
  // thread as soon as one is added.
  const gathered = new Promise((resolve) => pc.onGatheringStateChange((s) => s === 'complete' && resolve()));
  const video = new nodeDataChannel.Video('0', 'RecvOnly');
  video.addVP8Codec(96);
  video.addH264Codec(102);
  const track = pc.addTrack(video);
  track.onMessage((buf) => {
    // RTCP (RFC 5761: packet types 192-223 where RTP has its marker and type).
    if (buf.length >= 12 && !(buf[1] >= 192 && buf[1] <= 223)) gotRtp(buf);
  });
  // Its own channel, for the data section; libdatachannel numbers it by its
  // DTLS role, as RFC 8832 says, so it cannot collide with the node's.
  const own = pc.createDataChannel('whep-player');
  const theirs = [];
  pc.onDataChannel((dc) => {
    theirs.push(dc);
    const label = dc.getLabel();
    if (dc.isOpen()) channelOpened();
    dc.onOpen(() => channelOpened());
    dc.onMessage((data) => gotMessage(label, typeof data === 'string' ? data : Buffer.from(data)));
  });
  return {
    async offer() {
      pc.setLocalDescription();
      if (pc.gatheringState() !== 'complete') await gathered;
      return pc.localDescription().sdp;
    },
    answer: async (sdp) => pc.setRemoteDescription(sdp, 'answer'),
    async close() {
      pc.close();
      nodeDataChannel.cleanup();
    },
    // Held for the connection's life: node-datachannel closes a track or
    // channel whose wrapper the garbage collector takes.
    held: [video, track, own, theirs],
  };
}

if (process.env.NDC_LOG) nodeDataChannel.initLogger(process.env.NDC_LOG, (level, msg) => console.error('[ndc]', level, msg));
const peer = opts.stack === 'ndc' ? ndc() : werift();

function finish() {
  if (opts.rtpOut) writeFileSync(opts.rtpOut, Buffer.concat(rtpOut));
  if (opts.messages) {
    writeFileSync(opts.messages, received.map((m) => JSON.stringify(m)).join('\n') + (received.length ? '\n' : ''));
  }
  out(JSON.stringify(summary));
  Promise.resolve(peer.close()).finally(() => process.exit(0));
}

const offer = await peer.offer();
vlog(`offer:\n${offer}`);
let res;
try {
  res = await fetch(opts.url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp' },
    body: offer,
  });
} catch (err) {
  log(`POST failed: ${err.message}`);
  summary.status = 0;
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
  const location = new URL(res.headers.get('location'), opts.url).toString();
  vlog(`answer:\n${body}`);
  await peer.answer(body);
  setTimeout(async () => {
    if (!opts.keep) {
      try {
        summary.delete_status = (await fetch(location, { method: 'DELETE' })).status;
      } catch (err) {
        log(`DELETE failed: ${err.message}`);
      }
    }
    finish();
  }, opts.seconds * 1000);
}
