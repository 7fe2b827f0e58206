//! Any byte string given to the protocol parsers yields a message or a
//! `ProtocolError` with a documented code, never a panic; whatever parses
//! re-serialises to JSON that parses again as the same kind of message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use signalling::protocol::{ErrorCode, Event, ProtocolError, Request};

fn check_error(e: &ProtocolError) {
    assert!(
        ErrorCode::ALL.contains(&e.code) && e.code.is_malformed(),
        "parser returned code {:?}",
        e.code
    );
    // The error's own wire form must be a parseable event.
    let ev = e.to_event().to_json();
    assert!(
        matches!(Event::parse(ev.as_bytes()), Ok(Event::Error(_))),
        "error event does not parse: {ev}"
    );
}

fuzz_target!(|data: &[u8]| {
    match Request::parse(data) {
        Ok(req) => {
            let json = req.to_json();
            match Request::parse(json.as_bytes()) {
                Ok(again) => assert_eq!(again.type_name(), req.type_name(), "{json}"),
                Err(e) => panic!("request re-serialised as {json} does not parse: {e}"),
            }
        }
        Err(e) => check_error(&e),
    }
    match Event::parse(data) {
        Ok(ev) => {
            let json = ev.to_json();
            match Event::parse(json.as_bytes()) {
                Ok(again) => assert_eq!(again.type_name(), ev.type_name(), "{json}"),
                Err(e) => panic!("event re-serialised as {json} does not parse: {e}"),
            }
        }
        Err(e) => check_error(&e),
    }
});
