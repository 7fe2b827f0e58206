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

from gst_whip import Capture, GLib, Gst, GstWebRTC, Session, check_elements, log, ms


class Player(Capture, Session):
    channel_label = "whep-player"

    def __init__(self, opts):
        super().__init__(opts, "webrtcbin name=wb bundle-policy=max-bundle", {})
        self.opts.token = None
        self.capture()
        caps = Gst.Caps.from_string("application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000")
        self.wb.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, caps)

    def post_offer(self):
        done = super().post_offer()
        if self.location and not self.finished:
            GLib.timeout_add(int(self.opts.seconds * 1000), self.finish)
        return done


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
