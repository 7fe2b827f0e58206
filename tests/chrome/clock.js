// Glass-to-glass latency, measured by the pictures themselves.
//
// The source page draws the wall clock into every frame as a strip of
// 16x16 blocks (one per bit, on the encoder's macroblock grid, so they
// survive VP8 at a few hundred kbit/s), and hands each frame to the stream
// the moment it is drawn. A viewer page reads the strip back from every
// frame it presents (requestVideoFrameCallback) and subtracts it from its
// own clock. All browsers of a test run on one machine, so they share one
// clock: `performance.timeOrigin + performance.now()`.
//
// Strip: 32 bits of the time in ms (modulo 2^32), then 8 bits of check (the
// XOR of its four bytes); white is 1. A frame whose check fails is counted
// as unreadable, never measured.

// Injected into a page by WebDriver: defines window.ptClock.
{
const W = 640, H = 360, CELL = 16, BITS = 32, CHECK = 8;

function wallMs() {
  return Math.floor(performance.timeOrigin + performance.now());
}

function bitsOf(ms) {
  const t = ms % 2 ** 32;
  const bytes = [t >>> 24 & 255, t >>> 16 & 255, t >>> 8 & 255, t & 255];
  const check = bytes[0] ^ bytes[1] ^ bytes[2] ^ bytes[3];
  const out = [];
  for (let i = BITS - 1; i >= 0; i--) out.push(Math.floor(t / 2 ** i) % 2);
  for (let i = CHECK - 1; i >= 0; i--) out.push(check >>> i & 1);
  return out;
}

// Source: a canvas stream with the clock in it, 30 frames a second.
function clockStream() {
  const canvas = document.createElement('canvas');
  canvas.width = W;
  canvas.height = H;
  const g = canvas.getContext('2d');
  const stream = canvas.captureStream(0);
  const track = stream.getVideoTracks()[0];
  let n = 0;
  const draw = () => {
    // Something moves, so the encoder sends real frames, not skips.
    g.fillStyle = `hsl(${(n * 3) % 360}, 60%, 40%)`;
    g.fillRect(0, CELL, W, H - CELL);
    g.fillStyle = '#fff';
    g.fillRect((n * 8) % W, 120, 60, 120);
    n++;
    const bits = bitsOf(wallMs());
    bits.forEach((b, i) => {
      g.fillStyle = b ? '#fff' : '#000';
      g.fillRect(i * CELL, 0, CELL, CELL);
    });
    track.requestFrame();
  };
  // Timers keep drawing where requestAnimationFrame stops.
  setInterval(draw, 1000 / 30);
  draw();
  return stream;
}

// Viewer: reads the clock from every frame `video` presents. Returns the
// record it fills: latencies in ms, and frames it could not read.
function readClock(video) {
  const canvas = document.createElement('canvas');
  canvas.width = W;
  canvas.height = CELL;
  const g = canvas.getContext('2d', { willReadFrequently: true });
  const record = { latencies: [], unreadable: 0 };
  const onFrame = () => {
    g.drawImage(video, 0, 0, video.videoWidth, CELL * video.videoHeight / H, 0, 0, W, CELL);
    const px = g.getImageData(0, 0, W, CELL).data;
    // The callback's own timestamp is the start of the display frame, which
    // can be earlier than the picture drawImage got: a frame that arrived
    // since (two can come back to back after a repair) would read as seen
    // before it was drawn. The clock after the read is later than both.
    const seen = wallMs();
    const bits = [];
    for (let i = 0; i < BITS + CHECK; i++) {
      // The middle of the block, away from edges the codec smears.
      let sum = 0;
      for (let y = 5; y < 11; y++) {
        for (let x = 5; x < 11; x++) {
          const o = (y * W + i * CELL + x) * 4;
          sum += px[o] + px[o + 1] + px[o + 2];
        }
      }
      bits.push(sum / (36 * 3) > 128 ? 1 : 0);
    }
    let t = 0;
    for (let i = 0; i < BITS; i++) t = t * 2 + bits[i];
    let check = 0;
    for (let i = 0; i < CHECK; i++) check = check * 2 + bits[BITS + i];
    const bytes = [t >>> 24 & 255, t >>> 16 & 255, t >>> 8 & 255, t & 255];
    if ((bytes[0] ^ bytes[1] ^ bytes[2] ^ bytes[3]) === check && t !== 0) {
      // Modulo 2^32 on both sides: a wrap between drawing and seeing is fine.
      // Signed, so a misreading shows as itself and not as 49 days.
      const d = ((seen % 2 ** 32) - t + 2 ** 32) % 2 ** 32;
      record.latencies.push(d >= 2 ** 31 ? d - 2 ** 32 : d);
    } else {
      record.unreadable++;
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  return record;
}

window.ptClock = { clockStream, readClock };
}
