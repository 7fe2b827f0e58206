// Chromium as a WHIP publisher and as a WHEP player, for tests/browser.rs.
// Run in any page of a loopback origin (a secure context: the fake camera
// needs one). Both keep what the tests read in `window.offerHttp`:
//
//   status, location, etag   the POST's answer
//   hashes                   FNV-1a (32 bits) of each encoded video frame,
//                            as the encoder gave it (WHIP) or as the
//                            decoder gets it (WHEP), in order, through
//                            Chromium's encoded transform: the test hashes
//                            the frames its own recording or file holds
//   firstFrameMs             when the first of them passed, in ms after the
//                            offer began
//   framesDecoded, frameWidth, frameHeight   the player's inbound stats
//   messages                 data-channel messages received (WHEP)
//   sent                     messages sent (WHIP, after sendMessages)
//   errors                   what went wrong, for the test's failure text

(() => {
  const state = (window.offerHttp = {
    status: null,
    location: null,
    etag: null,
    hashes: [],
    messages: [],
    sent: 0,
    framesDecoded: 0,
    frameWidth: 0,
    frameHeight: 0,
    errors: [],
    // The first encoded frame's time, in ms after the POST began.
    firstFrameMs: null,
    postedAt: 0,
  });
  const MAX_HASHES = 2000;

  function fnv1a(bytes) {
    let h = 0x811c9dc5;
    for (let i = 0; i < bytes.length; i++) {
      h ^= bytes[i];
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h >>> 0;
  }

  // Hashes each video frame passing `sender` or `receiver`, unchanged.
  function hashFrames(end) {
    const { readable, writable } = end.createEncodedStreams();
    readable
      .pipeThrough(
        new TransformStream({
          transform(frame, out) {
            if (state.firstFrameMs === null) state.firstFrameMs = Math.round(performance.now() - state.postedAt);
            if (state.hashes.length < MAX_HASHES) state.hashes.push(fnv1a(new Uint8Array(frame.data)));
            out.enqueue(frame);
          },
        }),
      )
      .pipeTo(writable)
      .catch((e) => state.errors.push(`transform: ${e}`));
  }

  // With encodedInsertableStreams every sender's frames wait in its
  // streams until they are piped through.
  function passThrough(end) {
    const { readable, writable } = end.createEncodedStreams();
    readable.pipeTo(writable).catch((e) => state.errors.push(`pass-through: ${e}`));
  }

  async function gathered(pc) {
    if (pc.iceGatheringState === 'complete') return;
    await Promise.race([
      new Promise((resolve) =>
        pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve()),
      ),
      new Promise((resolve) => setTimeout(resolve, 3000)),
    ]);
  }

  // POSTs the complete offer (no trickle) and applies the answer.
  async function exchange(pc, url, headers) {
    state.postedAt = performance.now();
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...headers },
      body: pc.localDescription.sdp,
    });
    state.status = res.status;
    const body = await res.text();
    if (res.status !== 201) {
      state.errors.push(`POST ${res.status}: ${body}`);
      return res.status;
    }
    state.location = new URL(res.headers.get('location'), url).toString();
    state.etag = res.headers.get('etag');
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    return res.status;
  }

  // The fake camera and microphone to `url`, with a data channel `data`.
  window.whipPublish = async (url, token) => {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 360, frameRate: 30 },
      audio: true,
    });
    const pc = new RTCPeerConnection({ encodedInsertableStreams: true });
    for (const track of stream.getTracks()) {
      const { sender } = pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      if (track.kind === 'video') hashFrames(sender);
      else passThrough(sender);
    }
    const dc = pc.createDataChannel('data');
    state.pc = pc;
    state.send = (n, prefix) => {
      let i = 0;
      const next = () => {
        if (i >= n) return;
        dc.send(`${prefix}-${String(i).padStart(4, '0')}`);
        state.sent = ++i;
        setTimeout(next, 5);
      };
      next();
    };
    state.channelOpen = new Promise((resolve) => (dc.onopen = resolve));
    return exchange(pc, url, token ? { Authorization: `Bearer ${token}` } : {});
  };

  // Plays `url`'s video (and its channels: the offer has a data section).
  window.whepPlay = async (url) => {
    const pc = new RTCPeerConnection({ encodedInsertableStreams: true });
    const { receiver } = pc.addTransceiver('video', { direction: 'recvonly' });
    hashFrames(receiver);
    pc.createDataChannel('whep-player');
    pc.ondatachannel = (e) => {
      e.channel.onmessage = (m) => state.messages.push(typeof m.data === 'string' ? m.data : '(binary)');
    };
    pc.ontrack = (e) => {
      const video = document.createElement('video');
      video.muted = true;
      video.autoplay = true;
      video.srcObject = new MediaStream([e.track]);
      document.body.appendChild(video);
    };
    state.pc = pc;
    setInterval(async () => {
      const stats = await pc.getStats();
      stats.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'video') {
          state.framesDecoded = r.framesDecoded ?? 0;
          state.frameWidth = r.frameWidth ?? 0;
          state.frameHeight = r.frameHeight ?? 0;
        }
      });
    }, 200);
    return exchange(pc, url, {});
  };

  // DELETE of the session; its status.
  window.endSession = async (token) => {
    const res = await fetch(state.location, {
      method: 'DELETE',
      headers: token ? { Authorization: `Bearer ${token}` } : {},
    });
    state.pc.close();
    return res.status;
  };
})();
