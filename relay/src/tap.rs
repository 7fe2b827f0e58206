//! The shell our interceptors share. A webrtc-rs interceptor is a sans-I/O
//! stage with a queue each way that passes every packet on; ours look at
//! (and may change or drop) what comes in, watch what goes out and may add
//! to it on a timer, and follow stream bindings. The stage is written once
//! here; each of ours says what it does.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Interceptor, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;

/// What one of our interceptors does.
pub trait ReadTap: Send + Sync + 'static {
    /// An inbound packet on its way up the chain; false drops it.
    fn on_read(&mut self, msg: &mut TaggedPacket) -> bool;

    /// An outbound packet on its way down the chain.
    fn on_write(&mut self, _: &TaggedPacket) {}

    /// When [`ReadTap::on_timeout`] next has something to do.
    fn next_timeout(&self) -> Option<Instant> {
        None
    }

    /// Packets to send down the chain at `now`. (webrtc-rs flushes writes
    /// after a timeout; reads made then would wait for the next packet in.)
    fn on_timeout(&mut self, _now: Instant) -> Vec<TaggedPacket> {
        Vec::new()
    }

    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
}

/// A [`ReadTap`] as a stage of the chain.
pub struct Tap<T> {
    inner: T,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

/// Puts `tap` at `slot` of the chain (reads go from low slots to high,
/// writes the other way).
pub fn register<T: ReadTap>(registry: Registry, slot: usize, tap: T) -> Registry {
    registry.with(
        Slot::from(slot),
        Tap {
            inner: tap,
            read: VecDeque::new(),
            write: VecDeque::new(),
        },
    )
}

impl<T: ReadTap> Protocol<TaggedPacket, TaggedPacket, ()> for Tap<T> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if self.inner.on_read(&mut msg) {
            self.read.push_back(msg);
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inner.on_write(&msg);
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        if self.inner.next_timeout().is_some_and(|t| t <= now) {
            self.write.extend(self.inner.on_timeout(now));
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.inner.next_timeout()
    }
}

impl<T: ReadTap> Interceptor for Tap<T> {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_local_stream(info);
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner.bind_remote_stream(info);
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner.unbind_remote_stream(info);
    }
}
