//! Properties of the wire parser (`Request::parse`, `Event::parse`).
//!
//! Whatever bytes arrive, parsing must not panic and must give either a
//! message or an error carrying one of the codes PROTOCOL.md documents for
//! malformed input (`bad-json`, `bad-request`, `unknown-type`), classified the
//! way the protocol says:
//!
//! * not JSON at all → `bad-json`;
//! * a JSON object without exactly one string `type` → `bad-request`;
//! * a string `type` that names no message → `unknown-type`;
//! * a known `type` whose fields are missing or ill-typed → `bad-request`;
//! * unknown fields are ignored.
//!
//! "JSON" here means what serde_json accepts: numbers whose magnitude
//! overflows an f64 (`1e400`) are outside it, and the generators below track
//! them so that the strict classification is checked only where it applies
//! (see `out_of_range_numbers` for what happens to those).
//!
//! Valid messages are also checked to survive `to_json` → `parse` → `to_json`
//! unchanged, floats bit for bit (`floats_round_trip`).

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use signalling::protocol::{
    Create, ErrorCode, ErrorMsg, Event, Hello, IceServer, Join, Joined, Parent, PeerRef,
    ProtocolError, Reach, Reclaim, Request, Role, SignalFrom, SignalTo, Stats, TreeClosed,
    REQUEST_TYPES,
};

const EVENT_TYPES: [&str; 10] = [
    "hello",
    "created",
    "joined",
    "signal",
    "parent",
    "child",
    "child-gone",
    "left",
    "tree-closed",
    "error",
];

/// Type names that are neither requests nor events, but look like them.
const FAKE_TYPES: [&str; 14] = [
    "",
    "Join",
    "JOIN",
    "join ",
    " join",
    "joinx",
    "dance",
    "ping",
    "child_gone",
    "tree_closed",
    "créate",
    "join\u{0}",
    "le\"ave",
    "\u{1F333}",
];

/// Every field name any message uses, so random objects hit real fields.
const FIELD_NAMES: [&str; 28] = [
    "type",
    "tree",
    "k",
    "k1",
    "role",
    "to",
    "from",
    "data",
    "token",
    "rx_bps",
    "tx_bps",
    "children",
    "lost",
    "peer",
    "version",
    "ice_servers",
    "urls",
    "parent",
    "depth",
    "reason",
    "code",
    "message",
    "re",
    "sdp",
    "candidate",
    "relayed",
    "username",
    "credential",
];

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failures are reported with their minimal input; do not write
        // regression files into the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Checking results

/// The codes a parser may produce: documented, and about malformed input.
fn assert_parse_error(e: &ProtocolError, input: &[u8]) {
    assert!(
        ErrorCode::ALL.contains(&e.code),
        "undocumented code {:?} for {:?}",
        e.code,
        String::from_utf8_lossy(input)
    );
    assert!(
        e.code.is_malformed(),
        "a parser cannot know about {:?}; input {:?}",
        e.code,
        String::from_utf8_lossy(input)
    );
    assert!(!e.message.is_empty(), "empty error message");
    // Messages quote the input only in part: a huge frame must not come back.
    assert!(
        e.message.len() <= 512,
        "error message of {} bytes",
        e.message.len()
    );
    // The wire form of the error must itself be a parseable event.
    let ev = e.to_event().to_json();
    assert!(
        matches!(Event::parse(ev.as_bytes()), Ok(Event::Error(_))),
        "error event does not parse: {ev}"
    );
}

/// Parses as a request; returns the error code (or `None` for Ok) after
/// checking the result is well-formed.
fn request_outcome(input: &[u8]) -> Option<ErrorCode> {
    match Request::parse(input) {
        Ok(req) => {
            // Whatever was accepted must serialise to something that parses
            // to the same thing again.
            let json = req.to_json();
            let again = Request::parse(json.as_bytes())
                .unwrap_or_else(|e| panic!("re-parse of {json} failed: {e}"));
            assert_same_json(&again.to_json(), &json);
            assert_eq!(again.type_name(), req.type_name());
            None
        }
        Err(e) => {
            assert_parse_error(&e, input);
            if let Some(re) = e.re {
                assert!(REQUEST_TYPES.contains(&re), "re = {re:?}");
            }
            Some(e.code)
        }
    }
}

fn event_outcome(input: &[u8]) -> Option<ErrorCode> {
    match Event::parse(input) {
        Ok(ev) => {
            let json = ev.to_json();
            let again = Event::parse(json.as_bytes())
                .unwrap_or_else(|e| panic!("re-parse of {json} failed: {e}"));
            assert_eq!(again.to_json(), json, "not stable after one round trip");
            None
        }
        Err(e) => {
            assert_parse_error(&e, input);
            if let Some(re) = e.re {
                assert!(EVENT_TYPES.contains(&re), "re = {re:?}");
            }
            Some(e.code)
        }
    }
}

/// Units in the last place between two finite floats of the same sign.
fn ulps(a: f64, b: f64) -> u64 {
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u64::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

/// Equal as JSON values; floats compared by value, so `1.0` equals `1e0`.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            matches!((x.as_f64(), y.as_f64()), (Some(x), Some(y)) if ulps(x, y) == 0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

fn assert_same_json(a: &str, b: &str) {
    if a == b {
        return;
    }
    let parse = |s: &str| {
        serde_json::from_str::<Value>(s).unwrap_or_else(|e| panic!("to_json gave {s}: {e}"))
    };
    assert!(
        same_value(&parse(a), &parse(b)),
        "not stable after one round trip:\n  {a}\n  {b}"
    );
}

// ---------------------------------------------------------------------------
// Random JSON, as text, so it can hold what serde_json::Value cannot
// (integers beyond u64, out-of-range exponents, duplicate keys).

#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    /// A number literal exactly as written.
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn render(&self, spaced: bool, out: &mut String) {
        let (colon, comma) = if spaced { (" : ", " , ") } else { (":", ",") };
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => out.push_str(&quote(s)),
            J::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(comma);
                    }
                    v.render(spaced, out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(comma);
                    }
                    out.push_str(&quote(k));
                    out.push_str(colon);
                    v.render(spaced, out);
                }
                out.push('}');
            }
        }
    }

    fn text(&self, spaced: bool) -> String {
        let mut s = String::new();
        self.render(spaced, &mut s);
        s
    }

    /// Holds a number serde_json refuses (its magnitude overflows f64).
    fn out_of_range(&self) -> bool {
        match self {
            J::Num(n) => n.parse::<f64>().map_or(true, |f| f.is_infinite()),
            J::Arr(items) => items.iter().any(J::out_of_range),
            J::Obj(fields) => fields.iter().any(|(_, v)| v.out_of_range()),
            _ => false,
        }
    }

    /// Nesting depth (a scalar is 0).
    fn depth(&self) -> usize {
        match self {
            J::Arr(items) => 1 + items.iter().map(J::depth).max().unwrap_or(0),
            J::Obj(fields) => 1 + fields.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn number_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u32..=10).prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        // Integers beyond u64 / i64.
        "-?[1-9][0-9]{19,60}",
        // Exponents, some beyond f64's range.
        "-?[0-9]\\.[0-9]{1,5}[eE][+-]?[0-9]{1,3}",
        prop::sample::select(vec![
            "0",
            "-0",
            "0.0",
            "-0.0",
            "4294967295",
            "4294967296",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "1e2",
            "1E+2",
            "1.5",
            "1e308",
            "1.7976931348623157e308",
            "1e309",
            "-1e400",
            "1e-400",
            "5e-324",
        ])
        .prop_map(str::to_owned),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,12}",
        1 => "[\\x00-\\x1f\"\\\\/]{0,4}",
        1 => prop::sample::select(REQUEST_TYPES.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(EVENT_TYPES.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(FAKE_TYPES.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["relay", "browser", "peer", "source"]).prop_map(str::to_owned),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELD_NAMES.to_vec()).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

fn json_value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number_literal().prop_map(J::Num),
        json_string().prop_map(J::Str),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((key(), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

/// What goes in `type`: real names, fake names, or not a string at all.
fn type_value() -> impl Strategy<Value = J> {
    prop_oneof![
        2 => prop::sample::select(REQUEST_TYPES.to_vec()).prop_map(|s| J::Str(s.into())),
        2 => prop::sample::select(EVENT_TYPES.to_vec()).prop_map(|s| J::Str(s.into())),
        1 => prop::sample::select(FAKE_TYPES.to_vec()).prop_map(|s| J::Str(s.into())),
        1 => json_value(),
    ]
}

/// An object with, maybe, `type` fields inserted at random places.
fn json_object() -> impl Strategy<Value = J> {
    (
        prop::collection::vec((key(), json_value()), 0..8),
        prop::collection::vec((any::<prop::sample::Index>(), type_value()), 0..3),
    )
        .prop_map(|(mut fields, types)| {
            // Random fields named "type" stay too: duplicates are part of the test.
            for (at, v) in types {
                let i = at.index(fields.len() + 1);
                fields.insert(i, ("type".to_owned(), v));
            }
            J::Obj(fields)
        })
}

/// The classification PROTOCOL.md asks for, for a document serde_json
/// accepts whose top level is not an array (see `top_level_arrays`).
fn expected_class(doc: &J, known: &[&str]) -> Expect {
    let J::Obj(fields) = doc else {
        return Expect::Code(ErrorCode::BadRequest);
    };
    let types: Vec<&J> = fields
        .iter()
        .filter(|(k, _)| k == "type")
        .map(|(_, v)| v)
        .collect();
    match types.as_slice() {
        [J::Str(t)] if known.contains(&t.as_str()) => Expect::OkOrBadRequest,
        [J::Str(_)] => Expect::Code(ErrorCode::UnknownType),
        // None, not a string, or given twice.
        _ => Expect::Code(ErrorCode::BadRequest),
    }
}

#[derive(Debug, PartialEq)]
enum Expect {
    Code(ErrorCode),
    /// The type is known; its fields decide.
    OkOrBadRequest,
}

fn check_expect(got: Option<ErrorCode>, want: &Expect, input: &str) {
    match want {
        Expect::Code(c) => assert_eq!(got, Some(*c), "input {input}"),
        Expect::OkOrBadRequest => assert!(
            matches!(got, None | Some(ErrorCode::BadRequest)),
            "got {got:?} for {input}"
        ),
    }
}

// ---------------------------------------------------------------------------
// Valid messages

fn id() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[A-Za-z0-9_-]{1,24}", 1 => "\\PC{0,16}"]
}

/// Any finite float.
fn finite_f64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

/// Floats of the kind `stats` carries in practice (bit rates, counts).
/// Arbitrary floats: `floats_round_trip`.
fn exact_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0u64..1_000_000_000_000_000).prop_map(|n| n as f64),
        (-1_000_000i32..1_000_000).prop_map(|n| f64::from(n) / 1024.0),
        (0u32..100_000_000).prop_map(|n| f64::from(n) / 100.0),
    ]
}

/// A serde_json::Value with only finite numbers.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        exact_f64().prop_map(Value::from),
        "\\PC{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Opaque `data` as raw JSON text, written the way a browser might.
fn raw_data() -> impl Strategy<Value = Box<RawValue>> {
    (json_value(), any::<bool>())
        .prop_filter("serde_json accepts it", |(j, _)| {
            !j.out_of_range() && j.depth() < 100
        })
        .prop_filter_map("raw value", |(j, spaced)| {
            RawValue::from_string(j.text(spaced)).ok()
        })
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![Role::Relay, Role::Browser, Role::Peer])
}

const STATS_FIELDS: [&str; 5] = ["type", "rx_bps", "tx_bps", "children", "lost"];

fn valid_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any::<Option<u32>>().prop_map(|k| Request::Create(Create { k })),
        (
            id(),
            any::<Option<u32>>(),
            prop::option::of(role()),
            any::<Option<bool>>()
        )
            .prop_map(|(tree, k, role, relayed)| Request::Join(Join {
                tree,
                k,
                role,
                relayed
            })),
        any::<bool>().prop_map(|relayed| Request::Reach(Reach { relayed })),
        (id(), raw_data()).prop_map(|(to, data)| Request::Signal(SignalTo { to, data })),
        Just(Request::Reconnect),
        Just(Request::Leave),
        (id(), id(), proptest::option::of(0u32..100))
            .prop_map(|(tree, token, k)| Request::Reclaim(Reclaim { tree, token, k })),
        (
            prop::option::of(exact_f64()),
            prop::option::of(exact_f64()),
            any::<Option<u32>>(),
            any::<Option<u64>>(),
            prop::collection::btree_map("\\PC{0,8}", value(), 0..4),
        )
            .prop_map(|(rx_bps, tx_bps, children, lost, extra)| {
                let extra = extra
                    .into_iter()
                    .filter(|(k, _)| !STATS_FIELDS.contains(&k.as_str()))
                    .collect();
                Request::Stats(Stats {
                    rx_bps,
                    tx_bps,
                    children,
                    lost,
                    extra,
                })
            }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        prop::sample::select(ErrorCode::ALL.to_vec()),
        Just(ErrorCode::Other)
    ]
}

fn valid_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (
            id(),
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(
                (
                    prop::collection::vec("\\PC{0,12}", 0..3),
                    prop::option::of("\\PC{0,6}"),
                    prop::option::of("\\PC{0,6}")
                ),
                0..3
            )
        )
            .prop_map(|(peer, k, k1, ice)| Event::Hello(Hello {
                version: 1,
                peer,
                k,
                k1,
                ice_servers: ice
                    .into_iter()
                    .map(|(urls, username, credential)| IceServer {
                        urls,
                        username,
                        credential
                    })
                    .collect(),
            })),
        (id(), id()).prop_map(
            |(tree, token)| Event::Created(signalling::protocol::Created { tree, token })
        ),
        (id(), id(), any::<u32>()).prop_map(|(tree, parent, depth)| Event::Joined(Joined {
            tree,
            parent,
            depth
        })),
        (id(), raw_data()).prop_map(|(from, data)| Event::Signal(SignalFrom { from, data })),
        (id(), any::<u32>()).prop_map(|(parent, depth)| Event::Parent(Parent { parent, depth })),
        id().prop_map(|peer| Event::Child(PeerRef { peer })),
        id().prop_map(|peer| Event::ChildGone(PeerRef { peer })),
        Just(Event::Left),
        (id(), "\\PC{0,12}")
            .prop_map(|(tree, reason)| Event::TreeClosed(TreeClosed { tree, reason })),
        (
            error_code(),
            "\\PC{0,20}",
            prop::option::of(prop::sample::select(REQUEST_TYPES.to_vec()))
        )
            .prop_map(|(code, message, re)| Event::Error(ErrorMsg {
                code,
                message,
                re: re.map(str::to_owned)
            })),
    ]
}

// ---------------------------------------------------------------------------
// Mutations of valid requests, with an independent model of what the
// protocol accepts.

#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    OptU32,
    OptU64,
    OptF64,
    OptRole,
    Bool,
    OptBool,
    /// `signal.data`: any JSON value, but present.
    Any,
}

fn schema(ty: &str) -> &'static [(&'static str, Kind, bool)] {
    match ty {
        "create" => &[("k", Kind::OptU32, false)],
        "join" => &[
            ("tree", Kind::Str, true),
            ("k", Kind::OptU32, false),
            ("role", Kind::OptRole, false),
            ("relayed", Kind::OptBool, false),
        ],
        "reach" => &[("relayed", Kind::Bool, true)],
        "signal" => &[("to", Kind::Str, true), ("data", Kind::Any, true)],
        "reclaim" => &[
            ("tree", Kind::Str, true),
            ("token", Kind::Str, true),
            ("k", Kind::OptU32, false),
        ],
        "stats" => &[
            ("rx_bps", Kind::OptF64, false),
            ("tx_bps", Kind::OptF64, false),
            ("children", Kind::OptU32, false),
            ("lost", Kind::OptU64, false),
        ],
        _ => &[],
    }
}

fn accepts(kind: Kind, v: &Value) -> bool {
    match kind {
        Kind::Str => v.is_string(),
        Kind::OptU32 => v.is_null() || v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
        Kind::OptU64 => v.is_null() || v.is_u64(),
        Kind::OptF64 => v.is_null() || v.is_number(),
        Kind::OptRole => {
            v.is_null()
                || v.as_str()
                    .is_some_and(|s| ["relay", "browser", "peer", "source"].contains(&s))
        }
        Kind::Bool => v.is_boolean(),
        Kind::OptBool => v.is_null() || v.is_boolean(),
        Kind::Any => true,
    }
}

/// The model: what `Request::parse` must answer for this object.
fn model(obj: &Map<String, Value>) -> Option<ErrorCode> {
    let Some(ty) = obj.get("type").and_then(Value::as_str) else {
        return Some(ErrorCode::BadRequest);
    };
    if !REQUEST_TYPES.contains(&ty) {
        return Some(ErrorCode::UnknownType);
    }
    let mut verdict = None;
    for (name, kind, required) in schema(ty) {
        match obj.get(*name) {
            None if *required => verdict = Some(ErrorCode::BadRequest),
            None => {}
            Some(v) if !accepts(*kind, v) => verdict = Some(ErrorCode::BadRequest),
            Some(_) => {}
        }
    }
    verdict
}

#[derive(Clone, Debug)]
enum Mutation {
    /// Drop the field at this position (maybe `type` itself).
    Remove(prop::sample::Index),
    /// Replace the value of the field at this position.
    Retype(prop::sample::Index, Value),
    /// Set a field that may or may not belong to this message.
    Set(String, Value),
}

fn wrong_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        value(),
        prop::sample::select(vec![
            Value::Null,
            Value::from(-1),
            Value::from(u64::from(u32::MAX) + 1),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::from(1.5),
            Value::from(1e300),
            Value::from(-0.0),
            Value::from(""),
            Value::from("4"),
            Value::from("relay"),
            Value::from("source"),
            Value::from("Relay"),
            Value::from(true),
            Value::Array(vec![]),
            Value::Object(Map::new()),
        ]),
        prop::sample::select(REQUEST_TYPES.to_vec()).prop_map(Value::from),
        prop::sample::select(FAKE_TYPES.to_vec()).prop_map(Value::from),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
        (any::<prop::sample::Index>(), wrong_value()).prop_map(|(i, v)| Mutation::Retype(i, v)),
        (key(), wrong_value()).prop_map(|(k, v)| Mutation::Set(k, v)),
    ]
}

fn mutate(obj: &mut Map<String, Value>, m: &Mutation) {
    let keys: Vec<String> = obj.keys().cloned().collect();
    match m {
        Mutation::Remove(i) => {
            if !keys.is_empty() {
                obj.remove(&keys[i.index(keys.len())]);
            }
        }
        Mutation::Retype(i, v) => {
            if !keys.is_empty() {
                obj.insert(keys[i.index(keys.len())].clone(), v.clone());
            }
        }
        Mutation::Set(k, v) => {
            obj.insert(k.clone(), v.clone());
        }
    }
}

fn as_object(json: &str) -> Map<String, Value> {
    match serde_json::from_str(json) {
        Ok(Value::Object(m)) => m,
        other => panic!("to_json gave no object: {json} ({other:?})"),
    }
}

// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(16_000))]

    /// (a) Arbitrary bytes.
    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        request_outcome(&bytes);
        event_outcome(&bytes);
    }

    /// (a') Arbitrary bytes after a plausible start, to get past the first
    /// byte more often than noise does.
    #[test]
    fn random_tails(
        head in prop::sample::select(vec![
            "{", "{\"type\":", "{\"type\":\"join\",", "{\"type\":\"stats\",\"x\":",
            "{\"type\":\"signal\",\"to\":\"p\",\"data\":", "[", "\"",
        ]),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = head.as_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        request_outcome(&bytes);
        event_outcome(&bytes);
    }
}

proptest! {
    #![proptest_config(config(6_000))]

    /// (b) Arbitrary JSON documents of any shape.
    #[test]
    fn random_json(doc in json_value(), spaced in any::<bool>()) {
        let text = doc.text(spaced);
        let (req, ev) = (request_outcome(text.as_bytes()), event_outcome(text.as_bytes()));
        if !doc.out_of_range() && !matches!(doc, J::Arr(_)) {
            check_expect(req, &expected_class(&doc, &REQUEST_TYPES), &text);
            check_expect(ev, &expected_class(&doc, &EVENT_TYPES), &text);
        }
    }

    /// (b) Arbitrary JSON objects, with zero, one or several `type` fields
    /// of real, fake and non-string values.
    #[test]
    fn random_objects(doc in json_object(), spaced in any::<bool>()) {
        let text = doc.text(spaced);
        let (req, ev) = (request_outcome(text.as_bytes()), event_outcome(text.as_bytes()));
        if !doc.out_of_range() {
            check_expect(req, &expected_class(&doc, &REQUEST_TYPES), &text);
            check_expect(ev, &expected_class(&doc, &EVENT_TYPES), &text);
        }
    }

    /// (c) Valid requests with fields removed, replaced by other types, or added.
    #[test]
    fn mutated_requests(
        req in valid_request(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let original = as_object(&req.to_json());
        let mut obj = original.clone();
        for m in &muts {
            mutate(&mut obj, m);
        }
        let text = Value::Object(obj.clone()).to_string();
        let got = request_outcome(text.as_bytes());
        let want = model(&obj);
        prop_assert_eq!(got, want, "input {}", text);
        event_outcome(text.as_bytes());
        // A field no message of this type names is ignored: the request is
        // the one we started from.
        let ty = req.type_name();
        let only_extras = obj.iter().all(|(k, v)| {
            original.get(k) == Some(v) || (k != "type" && !schema(ty).iter().any(|(n, _, _)| n == k))
        }) && original.keys().all(|k| obj.contains_key(k));
        if only_extras && ty != "stats" {
            let parsed = Request::parse(text.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            let again = Value::Object(as_object(&parsed.to_json()));
            prop_assert!(
                same_value(&again, &Value::Object(original.clone())),
                "input {} gave {}", text, again
            );
        }
    }

    /// Every valid request survives to_json → parse → to_json unchanged.
    #[test]
    fn requests_round_trip(req in valid_request()) {
        let json = req.to_json();
        let parsed = Request::parse(json.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
        prop_assert_eq!(parsed.type_name(), req.type_name());
        prop_assert_eq!(parsed.to_json(), json);
    }

    /// Every valid event survives to_json → parse → to_json unchanged.
    #[test]
    fn events_round_trip(ev in valid_event()) {
        let json = ev.to_json();
        let parsed = Event::parse(json.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
        prop_assert_eq!(parsed.type_name(), ev.type_name());
        prop_assert_eq!(parsed.to_json(), json);
    }

    /// Not JSON: a valid request cut short, or followed by garbage, is `bad-json`.
    #[test]
    fn broken_json_is_bad_json(
        req in valid_request(),
        cut in any::<prop::sample::Index>(),
        garbage in prop::sample::select(vec!["}", "]", ",", "x", "{", "\"", "nul", "\u{0}", "//"]),
        truncate in any::<bool>(),
    ) {
        let json = req.to_json();
        let bytes = if truncate {
            json.as_bytes()[..cut.index(json.len())].to_vec()
        } else {
            format!("{json}{garbage}").into_bytes()
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        prop_assert_eq!(request_outcome(&bytes), Some(ErrorCode::BadJson), "input {}", text);
        prop_assert_eq!(event_outcome(&bytes), Some(ErrorCode::BadJson), "input {}", text);
    }

    /// A JSON object without a string `type` is `bad-request`.
    #[test]
    fn object_without_string_type_is_bad_request(
        fields in prop::collection::btree_map(key(), value(), 0..6),
        ty in prop::option::of(value().prop_filter("not a string", |v| !v.is_string())),
    ) {
        let mut obj: Map<String, Value> = fields.into_iter().filter(|(k, _)| k != "type").collect();
        if let Some(t) = ty {
            obj.insert("type".into(), t);
        }
        let text = Value::Object(obj).to_string();
        prop_assert_eq!(request_outcome(text.as_bytes()), Some(ErrorCode::BadRequest), "input {}", text);
        prop_assert_eq!(event_outcome(text.as_bytes()), Some(ErrorCode::BadRequest), "input {}", text);
    }

    /// A string `type` that names no message is `unknown-type`, whatever else
    /// the object holds.
    #[test]
    fn unknown_type_is_unknown_type(
        ty in prop_oneof![
            prop::sample::select(FAKE_TYPES.to_vec()).prop_map(str::to_owned),
            "\\PC{0,100}",
        ],
        fields in prop::collection::btree_map(key(), value(), 0..6),
    ) {
        let mut obj: Map<String, Value> = fields.into_iter().collect();
        obj.insert("type".into(), Value::from(ty.clone()));
        let text = Value::Object(obj).to_string();
        let req = request_outcome(text.as_bytes());
        if REQUEST_TYPES.contains(&ty.as_str()) {
            prop_assert!(matches!(req, None | Some(ErrorCode::BadRequest)));
        } else {
            prop_assert_eq!(req, Some(ErrorCode::UnknownType), "input {}", text);
        }
        let ev = event_outcome(text.as_bytes());
        if EVENT_TYPES.contains(&ty.as_str()) {
            prop_assert!(matches!(ev, None | Some(ErrorCode::BadRequest)));
        } else {
            prop_assert_eq!(ev, Some(ErrorCode::UnknownType), "input {}", text);
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Nesting far beyond serde_json's recursion limit, open or closed,
    /// inside a field of every request type: an error, never a stack overflow.
    #[test]
    fn deep_nesting(
        ty in prop::sample::select(REQUEST_TYPES.to_vec()),
        field in prop::sample::select(vec!["data", "k", "x", "tree"]),
        depth in 100usize..20_000,
        open in prop::sample::select(vec!["[", "{\"a\":"]),
        closed in any::<bool>(),
    ) {
        let mut text = format!("{{\"type\":\"{ty}\",\"to\":\"p\",\"{field}\":");
        text.push_str(&open.repeat(depth));
        text.push('1');
        if closed {
            let close = if open == "[" { "]" } else { "}" };
            text.push_str(&close.repeat(depth));
            text.push('}');
        }
        request_outcome(text.as_bytes());
        event_outcome(text.as_bytes());
    }
}

/// Numbers beyond f64's range are outside the JSON serde_json accepts; the
/// parser calls them `bad-json` where it has to read them, and ignores them
/// in fields it skips.
#[test]
fn out_of_range_numbers() {
    let code = |s: &str| Request::parse(s.as_bytes()).err().map(|e| e.code);
    assert_eq!(
        code(r#"{"type":"join","tree":"t","k":1e400}"#),
        Some(ErrorCode::BadJson)
    );
    assert_eq!(code(r#"{"type":"join","tree":"t","x":1e400}"#), None);
    assert_eq!(code(r#"{"x":1e400}"#), Some(ErrorCode::BadRequest));
    // Integers beyond u64 are read as floats: ill-typed, not malformed.
    assert_eq!(
        code(r#"{"type":"join","tree":"t","k":123456789012345678901234567890}"#),
        Some(ErrorCode::BadRequest)
    );
}

/// Each of the classifications once, by hand, as a readable summary.
#[test]
fn classification_examples() {
    let code = |s: &str| Request::parse(s.as_bytes()).err().map(|e| e.code);
    assert_eq!(code(""), Some(ErrorCode::BadJson));
    assert_eq!(code("{"), Some(ErrorCode::BadJson));
    assert_eq!(code("\u{feff}{}"), Some(ErrorCode::BadJson));
    assert_eq!(code("{} {}"), Some(ErrorCode::BadJson));
    assert_eq!(code("{}"), Some(ErrorCode::BadRequest));
    assert_eq!(code("null"), Some(ErrorCode::BadRequest));
    assert_eq!(code("\"join\""), Some(ErrorCode::BadRequest));
    assert_eq!(code(r#"{"type":null}"#), Some(ErrorCode::BadRequest));
    assert_eq!(code(r#"{"type":["join"]}"#), Some(ErrorCode::BadRequest));
    assert_eq!(
        code(r#"{"type":"leave","type":"leave"}"#),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(code(r#"{"type":"hello"}"#), Some(ErrorCode::UnknownType));
    assert_eq!(
        code(r#"{"type":"join","tree":"t","k":4294967296}"#),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(code(r#"{"type":"join","tree":"t","k":null}"#), None);
    assert_eq!(code(r#"{"type":"jo\u0069n","tree":"t"}"#), None);
    assert_eq!(code(" {\"type\":\"leave\"}\n"), None);
}

/// serde_json is built with `float_roundtrip`, so any finite float that
/// `stats` carries reads back bit for bit.
#[test]
fn floats_round_trip() {
    proptest::proptest!(config(2000), |(rx in finite_f64(), tx in finite_f64())| {
        let req = Request::Stats(Stats {
            rx_bps: Some(rx),
            tx_bps: Some(tx),
            ..Stats::default()
        });
        let json = req.to_json();
        let Ok(Request::Stats(s)) = Request::parse(json.as_bytes()) else {
            return Err(TestCaseError::fail(format!("{json} did not parse as stats")));
        };
        let (Some(rx2), Some(tx2)) = (s.rx_bps, s.tx_bps) else {
            return Err(TestCaseError::fail(format!("{json} lost a field")));
        };
        prop_assert_eq!(rx.to_bits(), rx2.to_bits(), "{} -> {}", rx, rx2);
        prop_assert_eq!(tx.to_bits(), tx2.to_bits(), "{} -> {}", tx, tx2);
    });
}

/// An enum-valued field (`join.role`, `error.code`) holding anything but
/// a string is ill-typed: `bad-request`, not `bad-json`, and the object form
/// serde would accept for an enum (`{"relay":null}`) is no role.
#[test]
fn enum_fields_must_be_strings() {
    for role in [
        "5",
        "true",
        "[]",
        "{}",
        "{\"relay\":1}",
        "{\"relay\":null}",
        "\"king\"",
    ] {
        let text = format!(r#"{{"type":"join","tree":"t","role":{role}}}"#);
        let got = Request::parse(text.as_bytes()).err().map(|e| e.code);
        assert_eq!(got, Some(ErrorCode::BadRequest), "{text}");
    }
    for code in ["5", "null", "[]"] {
        let text = format!(r#"{{"type":"error","code":{code},"message":"m","re":null}}"#);
        let got = Event::parse(text.as_bytes()).err().map(|e| e.code);
        assert_eq!(got, Some(ErrorCode::BadRequest), "{text}");
    }
}

/// Frames are JSON objects: a top-level array is `bad-request` even when
/// serde could read it as a positional struct (`["leave"]`).
#[test]
fn top_level_arrays() {
    for text in [
        "[]",
        "[1]",
        "[\"dance\"]",
        "[\"leave\"]",
        "[\"join\"]",
        "[\"reclaim\",\"x\"]",
        " [\"left\"]",
    ] {
        assert_eq!(
            request_outcome(text.as_bytes()),
            Some(ErrorCode::BadRequest),
            "{text}"
        );
        assert_eq!(
            event_outcome(text.as_bytes()),
            Some(ErrorCode::BadRequest),
            "{text}"
        );
    }
}
