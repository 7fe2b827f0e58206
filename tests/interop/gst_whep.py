#!/usr/bin/python3
"""A GStreamer webrtcbin WHEP player, for tests: it POSTs a receive-only
offer (VP8 video, and a data section) to WHEP_URL, writes every video RTP
packet it receives, and every message of the node's data channels, for
--seconds, then DELETEs its session.

stdout, one per line: `status: N`, `channel-open`, and last ONE line of JSON:
  {"status": N, "packets": P, "messages": M, "first_packet_ms": T,
   "connected_ms": T, "channel_open_ms": T, "delete_status": N}
--rtp-out FILE: each packet behind a 2-byte big-endian length; --messages
FILE: one JSON object per message ({"channel", "binary", "data"}), as
tests/interop/whep_play.mjs writes them.

Usage: gst_whep.py WHEP_URL [--seconds S] [--rtp-out FILE] [--messages FILE]
           [--host ADDR]... [--verbose]
Needs what gst_whip.py needs.
"""

import argparse
import json

from gst_whip import GLib, Gst, GstWebRTC, Session, check_elements, log, ms, out


class Player(Session):
    channel_label = "whep-player"

    def __init__(self, opts):
        super().__init__(
            opts, "webrtcbin name=wb bundle-policy=max-bundle", {"packets": 0, "messages": 0, "first_packet_ms": None}
        )
        self.opts.token = None
        self.rtp = []
        self.received = []
        caps = Gst.Caps.from_string("application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000")
        self.wb.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, caps)
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
        self.keep = getattr(self, "keep", []) + [channel]
        label = channel.get_property("label")
        channel.connect("on-open", self.on_channel_open)
        channel.connect("on-message-string", lambda _c, text: self.on_text(label, text))
        if channel.get_property("ready-state") == GstWebRTC.WebRTCDataChannelState.OPEN:
            GLib.idle_add(self.channel_opened)

    def on_text(self, label, text):
        GLib.idle_add(self.channel_opened)
        self.received.append({"channel": label, "binary": False, "data": text})
        self.summary["messages"] += 1

    def post_offer(self):
        done = super().post_offer()
        if self.location and not self.finished:
            GLib.timeout_add(int(self.opts.seconds * 1000), self.finish)
        return done

    def finished_hook(self):
        if self.opts.rtp_out:
            with open(self.opts.rtp_out, "wb") as f:
                f.write(b"".join(self.rtp))
        if self.opts.messages:
            with open(self.opts.messages, "w") as f:
                f.writelines(json.dumps(m) + "\n" for m in self.received)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rtp-out")
    p.add_argument("--messages")
    p.add_argument("--host", action="append", default=[])
    p.add_argument("--verbose", action="store_true")
    opts = p.parse_args()
    Gst.init(None)
    check_elements("webrtcbin", "nicesrc", "appsink")
    log(f"started at {ms()} ms")
    Player(opts).run()


if __name__ == "__main__":
    main()
