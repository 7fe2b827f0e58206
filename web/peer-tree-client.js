// peer-tree-client.js: a browser peer of a peer-tree-relay broadcast tree.
//
// An ES module with no build step, served by `peer-tree-relay signal` at
// /peer-tree-client.js. It speaks the signalling protocol (PROTOCOL.md, v1)
// over a plain WebSocket and keeps the seed's PeerTreeClient API:
//
//   import { PeerTreeClient } from '/peer-tree-client.js'
//   const client = new PeerTreeClient('ws://host:8080/ws', { k: 2 })
//   client.on('stream', (stream) => { video.srcObject = stream })
//   client.on('data', (message, label) => console.log(label, message))
//   await client.connect(treeID)        // or: await client.create(mediaStream)
//
// A browser is a full member: it plays what arrives and forwards every track
// (the received track itself, so the browser re-encodes it) and every data
// channel, message by message, to up to `k` children of its own.

const DEFAULTS = {
  timeout: 10000, // ms for a request's reply and for an upstream to connect
  k: 2, // children this browser accepts
  k1: undefined, // children accepted as a source (default: k; the server caps it)
  rtcConfig: undefined, // RTCConfiguration; default: the server's ice_servers
  statsInterval: 2000, // ms between `stats` reports to the server
  maxQueuedMessages: 4096, // per child channel that is still opening
};

// Above this many bytes queued on a child's channel we stop adding to it:
// one slow child must not hold the whole browser's memory.
const MAX_BUFFERED = 16 * 1024 * 1024;

export class PeerTreeClient {
  constructor(signal, opts = {}) {
    this.opts = { ...DEFAULTS, ...opts };
    this.destroyed = false;
    this.peerID = null;
    this.treeID = null;
    this.token = null;
    this.isSource = false;
    this.parentID = null;
    this.depth = null;
    this.hello = null;
    this.stats = { rxBps: 0, txBps: 0, lost: 0, framesDecoded: 0, frameWidth: 0, frameHeight: 0 };

    this._handlers = new Map();
    this._pending = new Map(); // request type -> [{ resolve, reject, timer }]
    this._up = null; // Link to the parent
    this._down = new Map(); // child peer id -> Link
    // What this peer forwards, keyed so that a new upstream's tracks replace
    // the old ones on the children's existing senders (no renegotiation).
    this._media = new Map(); // "video0" -> { track, stream }
    this._channels = new Map(); // label -> { ordered, protocol, maxRetransmits, maxPacketLifeTime }
    this._upTimer = null;
    this._statsTimer = null;
    this._lastTotals = null;

    this._ws = typeof signal === 'string' || signal === undefined || signal instanceof URL
      ? new WebSocket(signal ? String(signal) : defaultSignalUrl())
      : signal;
    this._ready = new Promise((resolve, reject) => {
      this._readyResolve = resolve;
      this._readyReject = reject;
    });
    this._ready.catch(() => {}); // reported through the requests that await it
    this._ws.addEventListener('message', (ev) => this._onMessage(ev.data));
    this._ws.addEventListener('close', () => this._onSignallingClosed());
    this._ws.addEventListener('error', () => {
      this._readyReject(new Error('signalling connection failed'));
    });
  }

  // ---- events (the seed's emitter API) ----

  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
    return this;
  }

  once(event, fn) {
    const wrap = (...args) => {
      this.off(event, wrap);
      fn(...args);
    };
    return this.on(event, wrap);
  }

  _emit(event, ...args) {
    for (const fn of [...(this._handlers.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (err) {
        console.error(`peer-tree: a '${event}' handler threw`, err);
      }
    }
  }

  // ---- the seed's methods ----

  /** Makes a tree with this browser as its source; resolves to the tree id. */
  async create(mediaStream) {
    const reply = await this._request({ type: 'create', k: this.opts.k1 ?? this.opts.k }, 'created');
    this.isSource = true;
    this.token = reply.token;
    this.depth = 0;
    this.parentID = null;
    this._media.clear();
    this._channels.clear();
    if (mediaStream) this._setLocalStream(mediaStream);
    this._channels.set('data', { ordered: true, protocol: '' });
    this._entered(reply.tree);
    return reply.tree;
  }

  /** Joins the tree `treeID`; resolves to { parent, depth }. */
  async connect(treeID) {
    const reply = await this._request(
      { type: 'join', tree: String(treeID), k: this.opts.k, role: 'browser' },
      'joined',
    );
    this.isSource = false;
    this._setParent(reply.parent, reply.depth);
    this._entered(reply.tree);
    return { parent: reply.parent, depth: reply.depth };
  }

  /** Asks the server for another upstream; this peer's own subtree stays. */
  async reconnectUpstream() {
    const reply = await this._request({ type: 'reconnect' }, 'parent');
    return { parent: reply.parent, depth: reply.depth };
  }

  /** Sends a message down the source's `data` channel to the whole tree. */
  send(message) {
    if (!this.isSource) throw new Error('peer-tree: only the source sends on the data channel');
    for (const link of this._down.values()) link.sendData('data', message);
  }

  /** Leaves the tree (children are re-placed) and stays connected to the server. */
  async leave() {
    if (!this.treeID) return;
    await this._request({ type: 'leave' }, 'left');
    this._exitTree('left');
  }

  /** Tears everything down: the tree membership, every peer connection, the socket. */
  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    this._teardown();
    this._ws.close(1000, 'destroyed');
    this._rejectAll(new Error('peer-tree: client destroyed'));
  }

  /** Peer ids of this browser's children. */
  get children() {
    return [...this._down.keys()];
  }

  /** The RTCPeerConnection to the parent, or null. */
  get upstream() {
    return this._up?.pc ?? null;
  }

  /** The tree's shareable watch link for this server. */
  watchUrl(base = location.href) {
    if (!this.treeID) return null;
    const u = new URL(base);
    u.hash = this.treeID;
    return u.href;
  }

  // ---- signalling ----

  async _request(msg, replyType) {
    await this._ready;
    if (this.destroyed) throw new Error('peer-tree: client destroyed');
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        this._dropPending(msg.type, entry);
        reject(new Error(`peer-tree: no reply to '${msg.type}' within ${this.opts.timeout} ms`));
      }, this.opts.timeout);
      if (!this._pending.has(msg.type)) this._pending.set(msg.type, []);
      this._pending.get(msg.type).push(entry);
      entry.reply = replyType;
      this._send(msg);
    });
  }

  _dropPending(type, entry) {
    const q = this._pending.get(type);
    const i = q ? q.indexOf(entry) : -1;
    if (i >= 0) q.splice(i, 1);
  }

  _settle(type, fn) {
    const entry = this._pending.get(type)?.shift();
    if (!entry) return false;
    clearTimeout(entry.timer);
    fn(entry);
    return true;
  }

  _rejectAll(err) {
    for (const [, q] of this._pending) {
      for (const e of q.splice(0)) {
        clearTimeout(e.timer);
        e.reject(err);
      }
    }
  }

  _send(msg) {
    if (this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(msg));
  }

  _signal(to, data) {
    this._send({ type: 'signal', to, data });
  }

  _onMessage(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      console.warn('peer-tree: the server sent something that is not JSON', raw);
      return;
    }
    switch (msg.type) {
      case 'hello':
        this.hello = msg;
        this.peerID = msg.peer;
        this._readyResolve(msg);
        break;
      case 'created':
        // Both `create` and `reclaim` answer with `created`.
        this._settle('create', (e) => e.resolve(msg)) || this._settle('reclaim', (e) => e.resolve(msg));
        break;
      case 'joined':
        this._settle('join', (e) => e.resolve(msg));
        break;
      case 'left':
        this._settle('leave', (e) => e.resolve(msg));
        break;
      case 'parent':
        this._setParent(msg.parent, msg.depth);
        this._emit('parent', msg.parent, msg.depth);
        this._settle('reconnect', (e) => e.resolve(msg));
        break;
      case 'child':
        this._addChild(msg.peer);
        break;
      case 'child-gone':
        this._removeChild(msg.peer);
        break;
      case 'signal':
        this._onSignal(msg.from, msg.data);
        break;
      case 'tree-closed':
        this._exitTree(msg.reason || 'tree-closed');
        break;
      case 'error': {
        const err = new Error(`peer-tree: ${msg.code}: ${msg.message}`);
        err.code = msg.code;
        if (!(msg.re && this._settle(msg.re, (e) => e.reject(err)))) this._emit('error', err);
        break;
      }
      default:
        break; // later protocol versions may add events
    }
  }

  _onSignallingClosed() {
    this._readyReject(new Error('signalling connection closed'));
    this._rejectAll(new Error('peer-tree: signalling connection closed'));
    if (this.destroyed) return;
    const wasInTree = !!this.treeID;
    this._teardown();
    if (wasInTree) this._emit('disconnect', 'signalling-closed');
  }

  _onSignal(from, data) {
    if (!data || typeof data !== 'object') return;
    if (from === this.parentID) {
      // The upstream always offers (rule 1): its first offer opens the link.
      if (!this._up || this._up.peer !== from) {
        if (!data.sdp) {
          this._earlyUp = this._earlyUp?.peer === from ? this._earlyUp : { peer: from, data: [] };
          this._earlyUp.data.push(data);
          return;
        }
        this._openUpstream(from);
      }
      this._up.onSignal(data);
    } else if (this._down.has(from)) {
      this._down.get(from).onSignal(data);
    }
  }

  // ---- tree membership ----

  _entered(treeID) {
    this.treeID = treeID;
    this._startStats();
    this._emit('discover', treeID);
  }

  _exitTree(reason) {
    const was = this.treeID;
    this._teardown();
    if (was) this._emit('disconnect', reason);
  }

  _teardown() {
    this._closeUpstream();
    for (const link of this._down.values()) link.close();
    this._down.clear();
    clearInterval(this._statsTimer);
    this._statsTimer = null;
    this.treeID = null;
    this.parentID = null;
    this.depth = null;
    this.isSource = false;
    this.token = null;
    this._media.clear();
    this._channels.clear();
  }

  _setParent(parent, depth) {
    // Even the same parent again means a new connection from it (it was told
    // `child-gone`, then `child`): the old one is finished.
    this._closeUpstream();
    this._earlyUp = null;
    this.parentID = parent;
    this.depth = depth;
    // The seed's timeout: an upstream that does not connect in time is
    // replaced rather than waited on forever.
    clearTimeout(this._upTimer);
    this._upTimer = setTimeout(() => {
      if (this.parentID === parent && this._up?.pc.connectionState !== 'connected') {
        this.reconnectUpstream().catch((err) => this._emit('error', err));
      }
    }, this.opts.timeout);
  }

  _openUpstream(peer) {
    const link = new Link(this, peer, true);
    this._up = link;
    const pc = link.pc;
    const announced = new Set();
    pc.ontrack = (ev) => {
      const kind = ev.track.kind;
      const sameKind = pc.getTransceivers().filter((t) => t.receiver.track.kind === kind);
      const key = kind + Math.max(0, sameKind.indexOf(ev.transceiver));
      const stream = ev.streams[0] ?? new MediaStream([ev.track]);
      this._forwardTrack(key, ev.track, stream);
      if (!announced.has(stream.id)) {
        announced.add(stream.id);
        this._emit('stream', stream);
      }
    };
    pc.ondatachannel = (ev) => this._onUpstreamChannel(ev.channel);
    pc.addEventListener('connectionstatechange', () => {
      if (this._up !== link) return;
      if (pc.connectionState === 'connected') clearTimeout(this._upTimer);
      if (pc.connectionState === 'failed') {
        this.reconnectUpstream().catch((err) => this._emit('error', err));
      }
    });
    if (this._earlyUp?.peer === peer) {
      for (const d of this._earlyUp.data) link.onSignal(d);
    }
    this._earlyUp = null;
    this._emit('upstreamPeer', pc);
  }

  _closeUpstream() {
    clearTimeout(this._upTimer);
    if (this._up) this._up.close();
    this._up = null;
  }

  _addChild(peer) {
    if (this._down.has(peer)) this._down.get(peer).close();
    const link = new Link(this, peer, false);
    this._down.set(peer, link);
    for (const [key, { track, stream }] of this._media) link.sendTrack(key, track, stream);
    for (const [label, spec] of this._channels) link.openChannel(label, spec);
    this._emit('downstreamPeer', link.pc);
  }

  _removeChild(peer) {
    const link = this._down.get(peer);
    if (!link) return;
    link.close();
    this._down.delete(peer);
  }

  // ---- forwarding ----

  _setLocalStream(stream) {
    const count = {};
    for (const track of stream.getTracks()) {
      const n = count[track.kind] ?? 0;
      count[track.kind] = n + 1;
      this._media.set(track.kind + n, { track, stream });
    }
  }

  _forwardTrack(key, track, stream) {
    this._media.set(key, { track, stream });
    for (const link of this._down.values()) link.sendTrack(key, track, stream);
  }

  _onUpstreamChannel(channel) {
    const label = channel.label;
    channel.binaryType = 'arraybuffer';
    if (!this._channels.has(label)) {
      const spec = {
        ordered: channel.ordered,
        protocol: channel.protocol,
        maxRetransmits: channel.maxRetransmits,
        maxPacketLifeTime: channel.maxPacketLifeTime,
      };
      this._channels.set(label, spec);
      for (const link of this._down.values()) link.openChannel(label, spec);
    }
    channel.onmessage = (ev) => {
      for (const link of this._down.values()) link.sendData(label, ev.data);
      this._emit('data', ev.data, label);
    };
  }

  // ---- stats ----

  _startStats() {
    clearInterval(this._statsTimer);
    this._lastTotals = null;
    this._statsTimer = setInterval(() => {
      this._collectStats().catch(() => {});
    }, this.opts.statsInterval);
  }

  async _collectStats() {
    const now = performance.now();
    let rx = 0;
    let tx = 0;
    let lost = 0;
    let video = null;
    if (this._up) {
      for (const s of (await this._up.pc.getStats()).values()) {
        if (s.type !== 'inbound-rtp') continue;
        rx += s.bytesReceived ?? 0;
        lost += Math.max(0, s.packetsLost ?? 0);
        if (s.kind === 'video') video = s;
      }
    }
    for (const link of this._down.values()) {
      for (const s of (await link.pc.getStats()).values()) {
        if (s.type === 'outbound-rtp') tx += s.bytesSent ?? 0;
      }
    }
    const last = this._lastTotals;
    this._lastTotals = { now, rx, tx };
    if (!last || !this.treeID) return;
    const secs = Math.max(0.001, (now - last.now) / 1000);
    this.stats = {
      rxBps: Math.max(0, Math.round(((rx - last.rx) * 8) / secs)),
      txBps: Math.max(0, Math.round(((tx - last.tx) * 8) / secs)),
      lost,
      framesDecoded: video?.framesDecoded ?? 0,
      frameWidth: video?.frameWidth ?? 0,
      frameHeight: video?.frameHeight ?? 0,
    };
    this._send({
      type: 'stats',
      rx_bps: this.stats.rxBps,
      tx_bps: this.stats.txBps,
      children: this._down.size,
      lost,
      agent: 'browser',
    });
    this._emit('stats', this.stats);
  }

  _rtcConfig() {
    if (this.opts.rtcConfig) return this.opts.rtcConfig;
    return { iceServers: this.hello?.ice_servers ?? [] };
  }
}

// One RTCPeerConnection to a neighbour. Signals are applied one at a time,
// in arrival order, because each step awaits the browser.
class Link {
  constructor(client, peer, upstream) {
    this.client = client;
    this.peer = peer;
    this.upstream = upstream;
    this.pc = new RTCPeerConnection(client._rtcConfig());
    this.queue = Promise.resolve();
    this.early = []; // candidates that came before the description
    this.again = false; // renegotiation asked for while an offer was out
    this.senders = new Map(); // media key -> RTCRtpSender (children only)
    this.channels = new Map(); // label -> { channel, backlog }
    this.closed = false;
    this.pc.onicecandidate = (ev) => {
      if (!this.closed) client._signal(peer, { candidate: ev.candidate ? ev.candidate.toJSON() : null });
    };
    if (!upstream) this.pc.onnegotiationneeded = () => this.negotiate();
  }

  onSignal(data) {
    this._enqueue(() => this._apply(data));
  }

  _enqueue(step) {
    this.queue = this.queue.then(() => (this.closed ? undefined : step())).catch((err) => {
      console.warn(`peer-tree: signalling with ${this.peer} failed`, err);
    });
  }

  async _apply(data) {
    const pc = this.pc;
    if (data.sdp) {
      if (data.sdp.type === 'offer' && !this.upstream) {
        console.warn(`peer-tree: child ${this.peer} sent an offer; children never offer (rule 1)`);
        return;
      }
      await pc.setRemoteDescription(data.sdp);
      for (const c of this.early.splice(0)) await this._addCandidate(c);
      if (data.sdp.type === 'offer') {
        await pc.setLocalDescription();
        this.client._signal(this.peer, { sdp: pc.localDescription });
      } else if (this.again) {
        this.again = false;
        await this._offer();
      }
    } else if ('candidate' in data) {
      if (!data.candidate) return; // end of candidates
      if (!pc.remoteDescription) this.early.push(data.candidate);
      else await this._addCandidate(data.candidate);
    }
  }

  async _addCandidate(c) {
    try {
      await this.pc.addIceCandidate(c);
    } catch (err) {
      // One unusable candidate (another family, an unresolvable name) must
      // not stop the others.
      console.warn(`peer-tree: ignoring a candidate from ${this.peer}`, err);
    }
  }

  negotiate() {
    this._enqueue(() => this._offer());
  }

  async _offer() {
    if (this.pc.signalingState !== 'stable') {
      this.again = true;
      return;
    }
    await this.pc.setLocalDescription();
    this.client._signal(this.peer, { sdp: this.pc.localDescription });
  }

  sendTrack(key, track, stream) {
    if (this.closed) return;
    const sender = this.senders.get(key);
    if (sender) {
      sender.replaceTrack(track).catch((err) => console.warn('peer-tree: replaceTrack failed', err));
    } else {
      this.senders.set(key, this.pc.addTrack(track, stream));
    }
  }

  openChannel(label, spec) {
    if (this.closed || this.channels.has(label)) return;
    const init = { ordered: spec.ordered, protocol: spec.protocol ?? '' };
    if (spec.maxRetransmits != null) init.maxRetransmits = spec.maxRetransmits;
    else if (spec.maxPacketLifeTime != null) init.maxPacketLifeTime = spec.maxPacketLifeTime;
    const channel = this.pc.createDataChannel(label, init);
    channel.binaryType = 'arraybuffer';
    const entry = { channel, backlog: [], dropped: 0 };
    channel.onopen = () => {
      for (const m of entry.backlog.splice(0)) channel.send(m);
    };
    this.channels.set(label, entry);
  }

  sendData(label, message) {
    const entry = this.channels.get(label);
    if (!entry || this.closed) return;
    const { channel } = entry;
    if (channel.readyState === 'connecting') {
      if (entry.backlog.length < this.client.opts.maxQueuedMessages) entry.backlog.push(message);
      else entry.dropped++;
    } else if (channel.readyState === 'open') {
      if (channel.bufferedAmount > MAX_BUFFERED) {
        entry.dropped++;
        return;
      }
      try {
        channel.send(message);
      } catch (err) {
        entry.dropped++;
        console.warn(`peer-tree: could not forward a message to ${this.peer}`, err);
      }
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.pc.close();
  }
}

function defaultSignalUrl() {
  const u = new URL('/ws', import.meta.url);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

export default PeerTreeClient;
