#!/usr/bin/python3
"""A GStreamer webrtcbin member of a peer-tree-relay tree, for interop
tests: it joins a tree as a leaf (k 0) by the signalling protocol
(signalling/PROTOCOL.md, version 1), answers every offer its parent sends,
trickles its candidates in the browser's forms, and records what it gets.

stdout: `channel-open` when the parent's data channel opened, and after
--seconds ONE line of JSON:
  {"packets": P, "messages": M, "first_packet_ms": T, "connected_ms": T,
   "channel_open_ms": T, "status": null, "delete_status": null}
(status and delete_status are the WHIP/WHEP drivers' and stay null.)
--rtp-out and --messages as gst_whep.py writes them.

Usage: gst_leaf.py WS_URL TREE_ID [--seconds S] [--rtp-out FILE]
           [--messages FILE] [--host ADDR]... [--verbose]
Needs what gst_whip.py needs, and python3-websocket.
"""

import argparse
import json
import threading

import websocket

from gst_whip import Capture, GLib, Gst, GstSdp, GstWebRTC, Session, check_elements, log


class Leaf(Capture, Session):
    channel_label = None

    def __init__(self, opts):
        super().__init__(opts, "webrtcbin name=wb bundle-policy=max-bundle", {})
        self.capture()
        self.parent = None
        self.remote_set = False
        self.early = []
        self.ws = None
        self.wb.connect("on-ice-candidate", self.on_candidate)

    def start(self):
        self.ws = websocket.WebSocketApp(
            self.opts.url,
            on_message=lambda _ws, raw: GLib.idle_add(self.on_ws, raw),
            on_error=lambda _ws, err: log(f"websocket error: {err}"),
        )
        threading.Thread(target=self.ws.run_forever, daemon=True).start()
        GLib.timeout_add(int(self.opts.seconds * 1000), self.finish)

    def send(self, msg):
        if self.opts.verbose:
            log("->", json.dumps(msg)[:200])
        self.ws.send(json.dumps(msg))

    def on_ws(self, raw):
        msg = json.loads(raw)
        kind = msg.get("type")
        if kind == "hello":
            self.send({"type": "join", "tree": self.opts.tree, "k": 0, "role": "peer"})
        elif kind in ("joined", "parent"):
            log(f"parent {msg['parent']}")
            self.parent = msg["parent"]
        elif kind == "signal" and msg.get("from") == self.parent:
            self.on_signal(msg.get("data") or {})
        elif kind == "error":
            log(f"server error {msg.get('code')}: {msg.get('message')}")
        return False

    def on_signal(self, data):
        sdp = data.get("sdp")
        if sdp and sdp.get("type") == "offer":
            if self.opts.verbose:
                log(f"offer:\n{sdp['sdp']}")
            _, msg = GstSdp.SDPMessage.new_from_text(sdp["sdp"])
            offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, msg)
            promise = Gst.Promise.new()
            self.wb.emit("set-remote-description", offer, promise)
            promise.wait()
            reply = promise.get_reply()
            if reply is not None and reply.has_field("error"):
                log(f"the offer was refused: {reply.get_value('error')}")
                return
            self.remote_set = True
            for index, candidate in self.early:
                self.wb.emit("add-ice-candidate", index, candidate)
            self.early = []
            promise = Gst.Promise.new()
            self.wb.emit("create-answer", None, promise)
            promise.wait()
            reply = promise.get_reply()
            answer = reply.get_value("answer") if reply is not None else None
            if answer is None:
                log(f"webrtcbin made no answer: {reply.to_string() if reply else 'no reply'}")
                return
            self.wb.emit("set-local-description", answer, Gst.Promise.new())
            self.send(
                {
                    "type": "signal",
                    "to": self.parent,
                    "data": {"sdp": {"type": "answer", "sdp": answer.sdp.as_text()}},
                }
            )
        elif data.get("candidate"):
            c = data["candidate"]
            index = c.get("sdpMLineIndex") or 0
            if self.remote_set:
                self.wb.emit("add-ice-candidate", index, c["candidate"])
            else:
                self.early.append((index, c["candidate"]))

    def on_gathering(self, _wb, _pspec):
        # Candidates are trickled to the parent; there is nothing to POST.
        pass

    def on_candidate(self, _wb, index, candidate):
        # On webrtcbin's thread: sent from the main loop.
        GLib.idle_add(self.send_candidate, index, candidate)

    def send_candidate(self, index, candidate):
        if self.parent:
            data = {"candidate": {"candidate": candidate, "sdpMid": str(index), "sdpMLineIndex": index}}
            self.send({"type": "signal", "to": self.parent, "data": data})
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("tree")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rtp-out")
    p.add_argument("--messages")
    p.add_argument("--host", action="append", default=[])
    p.add_argument("--verbose", action="store_true")
    opts = p.parse_args()
    opts.token = None
    Gst.init(None)
    check_elements("webrtcbin", "nicesrc", "appsink")
    Leaf(opts).run()


if __name__ == "__main__":
    main()
