#!/usr/bin/python3
"""A GStreamer webrtcbin WHIP publisher (RFC 9725), for tests and as the
README's GStreamer example: Debian's GStreamer 1.22 has no whipsink, so this
script POSTs webrtcbin's offer itself.

It sends an IVF file's VP8 frames in real time (ivfparse ! rtpvp8pay) and,
once its data channel `data` opens, --messages numbered text messages.

stdout, one per line: `status: N` (the POST's HTTP status), `channel-open`,
and after the file ends (plus --linger seconds) ONE line of JSON:
  {"status": N, "sent": M, "connected_ms": T, "channel_open_ms": T,
   "delete_status": N}
A status other than 201 ends it at once (exit 0): the caller judges it.

Usage: gst_whip.py WHIP_URL FILE.ivf [--token T] [--messages N]
           [--prefix P] [--messages-at MS] [--linger S] [--host ADDR]...

--host limits the host candidates to these addresses (libnice otherwise
leaves loopback out); tests pass 127.0.0.1.

Needs Debian's python3-gst-1.0, gir1.2-gst-plugins-bad-1.0,
gir1.2-nice-0.1, gstreamer1.0-plugins-good/-bad and gstreamer1.0-nice (run
it with /usr/bin/python3, which has the gi bindings).
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

T0 = time.monotonic()


def ms():
    return round((time.monotonic() - T0) * 1000)


def log(*a):
    print(f"[gst +{ms()}ms]", *a, file=sys.stderr, flush=True)


def out(line):
    print(line, flush=True)


def request(method, url, token, body=None, content_type=None):
    """An HTTP request; (status, body text, headers)."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers
    except OSError as e:
        log(f"{method} {url}: {e}")
        return 0, "", {}


class Session:
    """One webrtcbin session set up by POSTing its offer (WHIP or WHEP),
    ended by DELETE; subclasses build the pipeline around `wb`."""

    def __init__(self, opts, pipeline, summary):
        self.opts = opts
        self.summary = {
            "status": None,
            "connected_ms": None,
            "channel_open_ms": None,
            "delete_status": None,
            **summary,
        }
        self.location = None
        self.finished = False
        self.loop = GLib.MainLoop()
        self.pipe = Gst.parse_launch(pipeline)
        if not isinstance(self.pipe, Gst.Pipeline):
            # A description of one element gives the element alone.
            element, self.pipe = self.pipe, Gst.Pipeline.new()
            self.pipe.add(element)
        self.wb = self.pipe.get_by_name("wb")
        # Kept for the pipeline's life: PyGObject 3.42 drops a reference to
        # these objects it never took, and webrtcbin then crashes at the
        # offer.
        self.ice = self.wb.get_property("ice-agent")
        self.ice.set_property("ice-tcp", False)
        self.agent = agent = self.ice.get_property("agent")
        for host in opts.host:
            addr = Nice.Address.new()
            if not addr.set_from_string(host):
                log(f"--host {host}: not an IP address")
                sys.exit(2)
            agent.add_local_address(addr)
        self.wb.connect("notify::ice-gathering-state", self.on_gathering)
        self.wb.connect("notify::connection-state", self.on_connection)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)

    def run(self):
        self.run_started()
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)

    def run_started(self):
        self.pipe.set_state(Gst.State.PLAYING)
        # After PLAYING (webrtcbin has no transport before) and before the
        # offer, which would otherwise leave the data section out. The offer
        # is made once, from the main loop: webrtcbin's on-negotiation-needed
        # fires before its caps are known and again for the channel.
        if self.channel_label:
            self.channel = self.wb.emit("create-data-channel", self.channel_label, None)
            if self.channel is None:
                log("webrtcbin made no data channel (no SCTP elements?)")
            else:
                self.channel.connect("on-open", self.on_channel_open)
        self.start()

    def start(self):
        GLib.timeout_add(200, self.make_offer)

    def make_offer(self):
        promise = Gst.Promise.new()
        self.wb.emit("create-offer", None, promise)
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply else None
        if offer is None:
            log(f"webrtcbin made no offer: {reply.to_string() if reply else 'no reply'}")
            self.finish()
            return False
        self.wb.emit("set-local-description", offer, Gst.Promise.new())
        return False

    def on_gathering(self, wb, _pspec):
        # Called on libnice's thread: the exchange runs on the main loop.
        if wb.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self.post_offer)

    def post_offer(self):
        if self.summary["status"] is not None:
            return False
        wb = self.wb
        sdp = wb.get_property("local-description").sdp.as_text()
        if self.opts.verbose:
            log(f"offer:\n{sdp}")
        status, body, headers = request(
            "POST", self.opts.url, self.opts.token, sdp.encode(), "application/sdp"
        )
        self.summary["status"] = status
        out(f"status: {status}")
        if status != 201:
            log(f"refused: {body.strip()}")
            self.finish()
            return False
        self.location = urllib.parse.urljoin(self.opts.url, headers["Location"])
        if self.opts.verbose:
            log(f"answer:\n{body}")
        _, msg = GstSdp.SDPMessage.new_from_text(body)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        promise = Gst.Promise.new()
        wb.emit("set-remote-description", answer, promise)
        promise.wait()
        return False

    def on_connection(self, wb, _pspec):
        state = wb.get_property("connection-state")
        log(f"connection {state.value_nick}")
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and self.summary["connected_ms"] is None:
            self.summary["connected_ms"] = ms()

    def on_channel_open(self, channel):
        GLib.idle_add(self.channel_opened)

    def channel_opened(self):
        if self.summary["channel_open_ms"] is None:
            self.summary["channel_open_ms"] = ms()
            out("channel-open")
        return False

    def on_message(self, _bus, msg):
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            log(f"error: {err.message} ({dbg})")
            self.finish()

    def finish(self):
        if self.finished:
            return False
        self.finished = True
        if self.location:
            status, _, _ = request("DELETE", self.location, self.opts.token)
            self.summary["delete_status"] = status
        self.finished_hook()
        out(json.dumps(self.summary))
        self.loop.quit()
        return False

    def finished_hook(self):
        pass


class Publisher(Session):
    channel_label = "data"

    def __init__(self, opts):
        super().__init__(
            opts,
            f'filesrc location="{opts.file}" ! ivfparse ! identity name=pace sync=true '
            "! rtpvp8pay pt=96 mtu=1200 "
            "! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 "
            "! webrtcbin name=wb bundle-policy=max-bundle",
            {"sent": 0},
        )
        # webrtcbin posts no EOS of its own: the end of the file is seen on
        # its way in.
        pace = self.pipe.get_by_name("pace").get_static_pad("src")
        pace.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self.on_event)

    def channel_opened(self):
        super().channel_opened()
        delay = max(0, self.opts.messages_at - ms())
        GLib.timeout_add(delay, self.send_next)
        return False

    def send_next(self):
        i = self.summary["sent"]
        if i >= self.opts.messages:
            return False
        self.channel.emit("send-string", f"{self.opts.prefix}-{i:04d}")
        self.summary["sent"] = i + 1
        GLib.timeout_add(2, self.send_next)
        return False

    def on_event(self, _pad, info):
        if info.get_event().type == Gst.EventType.EOS:
            log("end of file")
            GLib.timeout_add(int(self.opts.linger * 1000), self.finish)
        return Gst.PadProbeReturn.OK


class Capture:
    """What a receiving webrtcbin session keeps: every RTP packet of its
    tracks and every text message of the channels the other end opens,
    written out at the end (--rtp-out, --messages) in tests/interop's
    formats."""

    def capture(self):
        self.rtp = []
        self.received = []
        self.held = []
        self.summary.update({"packets": 0, "messages": 0, "first_packet_ms": None})
        self.wb.connect("pad-added", self.on_pad)
        self.wb.connect("on-data-channel", self.on_data_channel)

    def on_pad(self, _wb, pad):
        if pad.direction != Gst.PadDirection.SRC:
            return
        sink = Gst.ElementFactory.make("appsink")
        sink.set_property("emit-signals", True)
        sink.set_property("sync", False)
        sink.connect("new-sample", self.on_sample)
        self.pipe.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def on_sample(self, sink):
        buf = sink.emit("pull-sample").get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            data = bytes(info.data)
            buf.unmap(info)
            self.rtp.append(len(data).to_bytes(2, "big") + data)
            self.summary["packets"] += 1
            if self.summary["first_packet_ms"] is None:
                self.summary["first_packet_ms"] = ms()
        return Gst.FlowReturn.OK

    def on_data_channel(self, _wb, channel):
        self.held.append(channel)
        label = channel.get_property("label")
        channel.connect("on-open", self.on_channel_open)
        channel.connect("on-message-string", lambda _c, text: self.on_text(label, text))
        if channel.get_property("ready-state") == GstWebRTC.WebRTCDataChannelState.OPEN:
            GLib.idle_add(self.channel_opened)

    def on_text(self, label, text):
        GLib.idle_add(self.channel_opened)
        self.received.append({"channel": label, "binary": False, "data": text})
        self.summary["messages"] += 1

    def finished_hook(self):
        if self.opts.rtp_out:
            with open(self.opts.rtp_out, "wb") as f:
                f.write(b"".join(self.rtp))
        if self.opts.messages:
            with open(self.opts.messages, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.received)


def check_elements(*names):
    """Exits 2 naming the GStreamer elements that are missing."""
    missing = [e for e in names if not Gst.ElementFactory.find(e)]
    if missing:
        log(f"missing GStreamer elements: {', '.join(missing)}")
        sys.exit(2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("file")
    p.add_argument("--token")
    p.add_argument("--messages", type=int, default=0)
    p.add_argument("--prefix", default="gst")
    p.add_argument("--messages-at", type=int, default=0)
    p.add_argument("--linger", type=float, default=1.0)
    p.add_argument("--host", action="append", default=[])
    p.add_argument("--verbose", action="store_true")
    opts = p.parse_args()
    Gst.init(None)
    check_elements("webrtcbin", "ivfparse", "rtpvp8pay", "nicesrc")
    Publisher(opts).run()


if __name__ == "__main__":
    main()
