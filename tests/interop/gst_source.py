#!/usr/bin/python3
"""GStreamer webrtcbin as the source of a peer-tree-relay tree, for interop
tests: it creates a tree by the signalling protocol (signalling/PROTOCOL.md,
version 1) and, when its one child arrives, offers it the VP8 frames of an
IVF file in real time (ivfparse ! rtpvp8pay) and a data channel `data`, on
which it sends --send numbered messages from --send-at ms after its start.

stdout: `tree: ID`, then after the file ends (plus --linger) ONE line of
JSON: {"connected_ms": T, "channel_open_ms": T, "sent": M, ...}.

Usage: gst_source.py WS_URL FILE.ivf [--send N] [--send-at MS]
           [--prefix P] [--linger S] [--host ADDR]... [--verbose]
Needs what gst_leaf.py needs.
"""

import argparse
import json
import threading

import websocket

from gst_whip import GLib, Gst, GstSdp, GstWebRTC, Publisher, check_elements, log, ms, out


class Source(Publisher):
    """The publisher's pipeline and messages, offered to a child through
    the signalling server instead of POSTed."""

    def __init__(self, opts):
        super().__init__(opts)
        self.child = None
        self.remote_set = False
        self.early = []
        self.wb.connect("on-ice-candidate", self.on_candidate)
        self.ws = websocket.WebSocketApp(
            opts.url,
            on_message=lambda _ws, raw: GLib.idle_add(self.on_ws, raw),
            on_error=lambda _ws, err: log(f"websocket error: {err}"),
        )
        threading.Thread(target=self.ws.run_forever, daemon=True).start()

    def run(self):
        # The pipeline plays once there is a child to offer it to.
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)

    def send(self, msg):
        if self.opts.verbose:
            log("->", json.dumps(msg)[:200])
        self.ws.send(json.dumps(msg))

    def on_ws(self, raw):
        msg = json.loads(raw)
        kind = msg.get("type")
        if kind == "hello":
            self.send({"type": "create", "k": 1})
        elif kind == "created":
            out(f"tree: {msg['tree']}")
        elif kind == "child" and self.child is None:
            self.child = msg["peer"]
            log(f"child {self.child}")
            super().run_started()
        elif kind == "signal" and msg.get("from") == self.child:
            self.on_signal(msg.get("data") or {})
        elif kind == "error":
            log(f"server error {msg.get('code')}: {msg.get('message')}")
        return False

    def on_gathering(self, _wb, _pspec):
        # Candidates are trickled to the child; there is nothing to POST.
        pass

    def make_offer(self):
        promise = Gst.Promise.new()
        self.wb.emit("create-offer", None, promise)
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply else None
        if offer is None:
            log(f"webrtcbin made no offer: {reply.to_string() if reply else 'no reply'}")
            return False
        self.wb.emit("set-local-description", offer, Gst.Promise.new())
        self.send(
            {
                "type": "signal",
                "to": self.child,
                "data": {"sdp": {"type": "offer", "sdp": offer.sdp.as_text()}},
            }
        )
        return False

    def on_signal(self, data):
        sdp = data.get("sdp")
        if sdp and sdp.get("type") == "answer":
            _, msg = GstSdp.SDPMessage.new_from_text(sdp["sdp"])
            answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
            promise = Gst.Promise.new()
            self.wb.emit("set-remote-description", answer, promise)
            promise.wait()
            self.remote_set = True
            for index, candidate in self.early:
                self.wb.emit("add-ice-candidate", index, candidate)
            self.early = []
        elif data.get("candidate"):
            c = data["candidate"]
            index = c.get("sdpMLineIndex") or 0
            if self.remote_set:
                self.wb.emit("add-ice-candidate", index, c["candidate"])
            else:
                self.early.append((index, c["candidate"]))

    def on_candidate(self, _wb, index, candidate):
        GLib.idle_add(self.send_candidate, index, candidate)

    def send_candidate(self, index, candidate):
        data = {"candidate": {"candidate": candidate, "sdpMid": str(index), "sdpMLineIndex": index}}
        self.send({"type": "signal", "to": self.child, "data": data})
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("file")
    p.add_argument("--send", dest="messages", type=int, default=0)
    p.add_argument("--send-at", dest="messages_at", type=int, default=0)
    p.add_argument("--prefix", default="gst")
    p.add_argument("--linger", type=float, default=1.0)
    p.add_argument("--host", action="append", default=[])
    p.add_argument("--verbose", action="store_true")
    opts = p.parse_args()
    opts.token = None
    Gst.init(None)
    check_elements("webrtcbin", "ivfparse", "rtpvp8pay", "nicesrc")
    Source(opts).run()


if __name__ == "__main__":
    main()
