#!/usr/bin/env node
// A werift (pure TypeScript WebRTC) WHEP player, for tests: it POSTs a
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
// Usage: node whep_play.mjs WHEP_URL [--seconds S] [--rtp-out FILE]
//          [--messages FILE] [--keep] [--verbose]

import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { RTCPeerConnection, useH264, useNACK, usePLI, useVP8, useVP9, useAV1X } from 'werift';

const USAGE =
  'usage: node whep_play.mjs WHEP_URL [--seconds S] [--rtp-out FILE] [--messages FILE] [--keep] [--verbose]';

function parseArgs(argv) {
  const opts = { seconds: 10, rtpOut: null, messages: null, keep: false, verbose: false };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--seconds') opts.seconds = Number(val());
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
  track.onReceiveRtp.subscribe((rtp) => {
    summary.packets++;
    if (summary.first_packet_ms === null) summary.first_packet_ms = ms();
    if (opts.rtpOut) {
      const bytes = rtp.serialize();
      const len = Buffer.alloc(2);
      len.writeUInt16BE(bytes.length);
      rtpOut.push(len, bytes);
    }
  });
});
// A channel of our own puts a data section in the offer, so the node can
// open its channels on the association. Negotiated, on an even id: werift
// takes the parity of its stream ids from its ICE role (as the offerer,
// odd) instead of its DTLS role (RFC 8832 §6: the DTLS client, which it is
// here, uses even ids), so an in-band channel of its own would take id 1,
// the node's first (the node, DTLS server, rightly uses odd ids).
pc.createDataChannel('whep-player', { negotiated: true, id: 0 });
pc.onDataChannel.subscribe((dc) => {
  const opened = () => {
    if (summary.channel_open_ms === null) {
      summary.channel_open_ms = ms();
      out('channel-open');
    }
  };
  if (dc.readyState === 'open') opened();
  dc.stateChanged.subscribe((s) => s === 'open' && opened());
  dc.onMessage.subscribe((data) => {
    opened();
    const binary = typeof data !== 'string';
    summary.messages++;
    received.push({
      channel: dc.label,
      binary,
      data: binary ? Buffer.from(data).toString('base64') : data,
    });
  });
});

function finish() {
  if (opts.rtpOut) writeFileSync(opts.rtpOut, Buffer.concat(rtpOut));
  if (opts.messages) {
    writeFileSync(opts.messages, received.map((m) => JSON.stringify(m)).join('\n') + (received.length ? '\n' : ''));
  }
  out(JSON.stringify(summary));
  pc.close().finally(() => process.exit(0));
}

await pc.setLocalDescription(await pc.createOffer());
if (pc.iceGatheringState !== 'complete') {
  await new Promise((resolve) => pc.iceGatheringStateChange.subscribe((s) => s === 'complete' && resolve()));
}
vlog(`offer:\n${pc.localDescription.sdp}`);
let res;
try {
  res = await fetch(opts.url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp' },
    body: pc.localDescription.sdp,
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
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
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
