//! Every message of PROTOCOL.md (version 1) as serde types.
//!
//! Parsing is two-pass on purpose: first only the `type` field is read (all
//! other fields are skipped without building a `Value`), then the fields of
//! that one message type. That lets every failure be classified the way the
//! protocol demands (`bad-json` / `bad-request` / `unknown-type`) instead of
//! serde's single "no variant matched", and lets `signal` payloads pass through
//! the server as raw JSON text that is never re-encoded. serde_json bounds
//! nesting depth itself, so no input can overflow the stack: every byte string
//! maps to a message or a [`ProtocolError`], never a panic (see the proptest
//! in `tests/protocol_props.rs` and the fuzz target in `fuzz/`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The protocol version this crate speaks, sent in `hello`.
pub const VERSION: u32 = 1;

/// The error codes of PROTOCOL.md, spelled as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    UnknownType,
    TooLarge,
    RateLimited,
    NoSuchTree,
    AlreadyInTree,
    NotInTree,
    NotANeighbour,
    BadToken,
    TreeFull,
    /// Sent by a newer server; kept so an old client does not fail to parse.
    Other,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::NoSuchTree,
        ErrorCode::AlreadyInTree,
        ErrorCode::NotInTree,
        ErrorCode::NotANeighbour,
        ErrorCode::BadToken,
        ErrorCode::TreeFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad-json",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::NoSuchTree => "no-such-tree",
            ErrorCode::AlreadyInTree => "already-in-tree",
            ErrorCode::NotInTree => "not-in-tree",
            ErrorCode::NotANeighbour => "not-a-neighbour",
            ErrorCode::BadToken => "bad-token",
            ErrorCode::TreeFull => "tree-full",
            ErrorCode::Other => "other",
        }
    }

    /// Malformed input counts toward the "8 malformed in a row" close rule;
    /// a well-formed request the server refuses does not.
    pub fn is_malformed(self) -> bool {
        matches!(
            self,
            ErrorCode::BadJson | ErrorCode::BadRequest | ErrorCode::UnknownType
        )
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        Ok(ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Other))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request or event that could not be accepted, with what to tell the peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    /// The request type the error answers, when it was recognisable.
    pub re: Option<&'static str>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>, re: Option<&'static str>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            re,
        }
    }

    /// The wire form of this error.
    pub fn to_event(&self) -> Event {
        Event::Error(ErrorMsg {
            code: self.code,
            message: self.message.clone(),
            re: self.re.map(str::to_owned),
        })
    }
}

/// What a peer says it is when it joins (PROTOCOL.md, `join`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A headless amplifier: preferred as a parent and placed high (rule 4).
    Relay,
    Browser,
    #[default]
    Peer,
    /// The tree's root; never sent in `join`, used in snapshots.
    Source,
}

/// Only the plain string form: serde's derived enum would also accept
/// `{"relay":null}`, which is no role the protocol knows.
impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        [Role::Relay, Role::Browser, Role::Peer, Role::Source]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                serde::de::Error::invalid_value(
                    serde::de::Unexpected::Str(&s),
                    &"\"relay\", \"browser\" or \"peer\"",
                )
            })
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Browser => "browser",
            Role::Peer => "peer",
            Role::Source => "source",
        }
    }
}

/// An entry of `hello.ice_servers`, shaped like the browser's RTCIceServer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

// ---------------------------------------------------------------------------
// Requests (peer to server)

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    pub tree: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Reachable only through a TURN relay (rule 8): placed as a leaf.
    /// Absent means false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relayed: Option<bool>,
}

/// `signal` as sent by a peer. `data` stays raw JSON text: the server only
/// forwards it, so it never pays to decode or re-encode an SDP.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignalTo {
    pub to: String,
    pub data: Box<RawValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    pub tree: String,
    pub token: String,
    /// The source's `k`, used when the server re-creates a tree it lost (it
    /// restarted): an extension of protocol v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
}

/// A member's reachability changed (rule 8): `relayed` when only a TURN
/// relay reaches it, so it must not have children.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub relayed: bool,
}

/// Optional counters a peer reports for the dashboard; unknown fields are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What the server keeps of a peer's extra stats fields: a few short ones.
/// A `stats` message may be as large as any other (64 KiB by default), and
/// every peer's last one is kept, so unbounded extras would let each peer
/// hold that much of the server's memory.
pub const STATS_EXTRA_FIELDS: usize = 16;
pub const STATS_EXTRA_BYTES: usize = 256;

impl Stats {
    /// Keeps at most [`STATS_EXTRA_FIELDS`] extra fields whose name and
    /// value (as JSON) are each at most [`STATS_EXTRA_BYTES`]; drops the
    /// rest.
    pub fn trim_extra(&mut self) {
        let extra = std::mem::take(&mut self.extra);
        self.extra = extra
            .into_iter()
            .filter(|(k, v)| {
                k.len() <= STATS_EXTRA_BYTES && v.to_string().len() <= STATS_EXTRA_BYTES
            })
            .take(STATS_EXTRA_FIELDS)
            .collect();
    }
}

#[derive(Clone, Debug)]
pub enum Request {
    Create(Create),
    Join(Join),
    Signal(SignalTo),
    Reconnect,
    Leave,
    Reclaim(Reclaim),
    Stats(Stats),
    Reach(Reach),
}

/// The `type` strings of requests, as `'static` so errors can name them.
pub const REQUEST_TYPES: [&str; 8] = [
    "create",
    "join",
    "signal",
    "reconnect",
    "leave",
    "reclaim",
    "stats",
    "reach",
];

impl Request {
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Create(_) => "create",
            Request::Join(_) => "join",
            Request::Signal(_) => "signal",
            Request::Reconnect => "reconnect",
            Request::Leave => "leave",
            Request::Reclaim(_) => "reclaim",
            Request::Stats(_) => "stats",
            Request::Reach(_) => "reach",
        }
    }

    /// Parses one text frame. Any byte string gives a request or an error
    /// carrying the code the protocol prescribes.
    pub fn parse(bytes: &[u8]) -> Result<Request, ProtocolError> {
        let ty = read_type(bytes)?;
        let re = REQUEST_TYPES.iter().copied().find(|t| *t == ty.as_ref());
        let Some(re) = re else {
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!("unknown request type {:?}", truncate(&ty, 40)),
                None,
            ));
        };
        let req = match re {
            "create" => Request::Create(fields(bytes, re)?),
            "join" => Request::Join(fields(bytes, re)?),
            "signal" => Request::Signal(fields(bytes, re)?),
            "reconnect" => Request::Reconnect,
            "leave" => Request::Leave,
            "reclaim" => Request::Reclaim(fields(bytes, re)?),
            "reach" => Request::Reach(fields(bytes, re)?),
            _ => {
                let mut stats: Stats = fields(bytes, re)?;
                // `flatten` collects every field it does not name, the tag too.
                stats.extra.remove("type");
                Request::Stats(stats)
            }
        };
        Ok(req)
    }

    /// The wire form (one JSON object with its `type`).
    pub fn to_json(&self) -> String {
        let ty = self.type_name();
        match self {
            Request::Create(m) => tagged(ty, m),
            Request::Join(m) => tagged(ty, m),
            Request::Signal(m) => tagged(ty, m),
            Request::Reclaim(m) => tagged(ty, m),
            Request::Stats(m) => tagged(ty, m),
            Request::Reach(m) => tagged(ty, m),
            Request::Reconnect | Request::Leave => tagged(ty, &Empty {}),
        }
    }
}

// ---------------------------------------------------------------------------
// Events (server to peer)

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub peer: String,
    pub k: u32,
    pub k1: u32,
    #[serde(default)]
    pub ice_servers: Vec<IceServer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub tree: String,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    pub tree: String,
    pub parent: String,
    pub depth: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignalFrom {
    pub from: String,
    pub data: Box<RawValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub parent: String,
    pub depth: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRef {
    pub peer: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeClosed {
    pub tree: String,
    /// `source-left` (the source left or did not reclaim in time), or, as an
    /// extension, `tree-full` when this peer could not be re-placed.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
    pub re: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Event {
    Hello(Hello),
    Created(Created),
    Joined(Joined),
    Signal(SignalFrom),
    Parent(Parent),
    Child(PeerRef),
    ChildGone(PeerRef),
    Left,
    TreeClosed(TreeClosed),
    Error(ErrorMsg),
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Hello(_) => "hello",
            Event::Created(_) => "created",
            Event::Joined(_) => "joined",
            Event::Signal(_) => "signal",
            Event::Parent(_) => "parent",
            Event::Child(_) => "child",
            Event::ChildGone(_) => "child-gone",
            Event::Left => "left",
            Event::TreeClosed(_) => "tree-closed",
            Event::Error(_) => "error",
        }
    }

    /// The wire form (one JSON object with its `type`).
    pub fn to_json(&self) -> String {
        let ty = self.type_name();
        match self {
            Event::Hello(m) => tagged(ty, m),
            Event::Created(m) => tagged(ty, m),
            Event::Joined(m) => tagged(ty, m),
            Event::Signal(m) => tagged(ty, m),
            Event::Parent(m) => tagged(ty, m),
            Event::Child(m) | Event::ChildGone(m) => tagged(ty, m),
            Event::Left => tagged(ty, &Empty {}),
            Event::TreeClosed(m) => tagged(ty, m),
            Event::Error(m) => tagged(ty, m),
        }
    }

    /// Parses one frame from a server. Unknown event types are an error the
    /// client may ignore (a newer server may send more).
    pub fn parse(bytes: &[u8]) -> Result<Event, ProtocolError> {
        let ty = read_type(bytes)?;
        Ok(match ty.as_ref() {
            "hello" => Event::Hello(fields(bytes, "hello")?),
            "created" => Event::Created(fields(bytes, "created")?),
            "joined" => Event::Joined(fields(bytes, "joined")?),
            "signal" => Event::Signal(fields(bytes, "signal")?),
            "parent" => Event::Parent(fields(bytes, "parent")?),
            "child" => Event::Child(fields(bytes, "child")?),
            "child-gone" => Event::ChildGone(fields(bytes, "child-gone")?),
            "left" => Event::Left,
            "tree-closed" => Event::TreeClosed(fields(bytes, "tree-closed")?),
            "error" => Event::Error(fields(bytes, "error")?),
            other => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownType,
                    format!("unknown event type {:?}", truncate(other, 40)),
                    None,
                ))
            }
        })
    }
}

// ---------------------------------------------------------------------------
// Parsing helpers

#[derive(Serialize)]
struct Empty {}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
}

/// Reads only the `type` field; every other field is skipped unparsed.
fn read_type(bytes: &[u8]) -> Result<Cow<'_, str>, ProtocolError> {
    // serde reads a struct from an array too (`["leave"]`); the protocol's
    // frames are objects only.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let code = if is_json(bytes) {
            ErrorCode::BadRequest
        } else {
            ErrorCode::BadJson
        };
        let what = if code == ErrorCode::BadJson {
            "not JSON"
        } else {
            "a message must be a JSON object"
        };
        return Err(ProtocolError::new(code, what, None));
    }
    let env: Envelope<'_> = serde_json::from_slice(bytes).map_err(|e| json_error(&e, None))?;
    env.ty.ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::BadRequest,
            "message has no string field \"type\"",
            None,
        )
    })
}

/// Second pass: the fields of one message type.
fn fields<T: DeserializeOwned>(bytes: &[u8], re: &'static str) -> Result<T, ProtocolError> {
    serde_json::from_slice(bytes).map_err(|e| json_error(&e, Some(re)))
}

fn json_error(e: &serde_json::Error, re: Option<&'static str>) -> ProtocolError {
    use serde_json::error::Category;
    let code = match e.classify() {
        Category::Data => ErrorCode::BadRequest,
        Category::Syntax | Category::Eof | Category::Io => ErrorCode::BadJson,
    };
    let what = match re {
        Some(t) => format!("{t}: {e}"),
        None => e.to_string(),
    };
    ProtocolError::new(code, truncate(&what, 200), re)
}

/// Writes `{"type":ty, ...fields of m}`. Internally tagged serde enums would do
/// this too, but they cannot carry `RawValue`, which `signal` needs.
fn tagged<T: Serialize>(ty: &str, m: &T) -> String {
    #[derive(Serialize)]
    struct Tagged<'a, T> {
        #[serde(rename = "type")]
        ty: &'a str,
        #[serde(flatten)]
        m: &'a T,
    }
    // Serialising these plain structs into a String cannot fail: no maps with
    // non-string keys, no I/O.
    serde_json::to_string(&Tagged { ty, m }).unwrap_or_else(|_| format!("{{\"type\":\"{ty}\"}}"))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks that a byte string is a single JSON value, for tests and tools.
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> ErrorCode {
        Request::parse(s.as_bytes()).unwrap_err().code
    }

    #[test]
    fn classifies_bad_input() {
        assert_eq!(code("not json"), ErrorCode::BadJson);
        assert_eq!(code("{\"type\":\"join\""), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code("{}"), ErrorCode::BadRequest);
        assert_eq!(code("{\"type\":5}"), ErrorCode::BadRequest);
        assert_eq!(code("{\"type\":\"dance\"}"), ErrorCode::UnknownType);
        assert_eq!(code("{\"type\":\"join\"}"), ErrorCode::BadRequest);
        assert_eq!(
            code("{\"type\":\"join\",\"tree\":\"t\",\"k\":-1}"),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code("{\"type\":\"join\",\"tree\":\"t\",\"k\":1e99}"),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code("{\"type\":\"join\",\"tree\":\"t\",\"role\":\"king\"}"),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code("{\"type\":\"signal\",\"to\":\"x\"}"),
            ErrorCode::BadRequest
        );
        let deep = "[".repeat(100_000);
        assert_eq!(
            code(&format!("{{\"type\":\"stats\",\"x\":{deep}")),
            ErrorCode::BadJson
        );
    }

    #[test]
    fn reach_needs_a_boolean() {
        for bad in [
            r#"{"type":"reach"}"#,
            r#"{"type":"reach","relayed":null}"#,
            r#"{"type":"reach","relayed":1}"#,
            r#"{"type":"reach","relayed":"true"}"#,
            r#"{"type":"join","tree":"t","relayed":"yes"}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::BadRequest, "{bad}");
        }
        let r = Request::parse(br#"{"type":"reach","relayed":true}"#).unwrap();
        assert!(matches!(r, Request::Reach(Reach { relayed: true })));
        let Request::Join(j) = Request::parse(br#"{"type":"join","tree":"t"}"#).unwrap() else {
            panic!("not a join")
        };
        assert_eq!(j.relayed, None, "absent: not relayed");
    }

    #[test]
    fn error_names_the_request() {
        let e = Request::parse(br#"{"type":"join","tree":7}"#).unwrap_err();
        assert_eq!(e.re, Some("join"));
        let json = e.to_event().to_json();
        assert!(
            json.starts_with(r#"{"type":"error","code":"bad-request""#),
            "{json}"
        );
        assert!(json.ends_with(r#""re":"join"}"#), "{json}");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let r = Request::parse(br#"{"type":"create","k":3,"future":{"x":[1]}}"#).unwrap();
        assert!(matches!(r, Request::Create(Create { k: Some(3) })));
    }

    #[test]
    fn signal_data_passes_through_verbatim() {
        let raw = r#"{"type":"signal","to":"p1","data":{"sdp":{"type":"offer","sdp":"v=0\r\n"}}}"#;
        let Request::Signal(s) = Request::parse(raw.as_bytes()).unwrap() else {
            panic!("not a signal")
        };
        let out = Event::Signal(SignalFrom {
            from: "p0".into(),
            data: s.data,
        })
        .to_json();
        assert_eq!(
            out,
            r#"{"type":"signal","from":"p0","data":{"sdp":{"type":"offer","sdp":"v=0\r\n"}}}"#
        );
    }

    #[test]
    fn events_round_trip() {
        let evs = [
            r#"{"type":"hello","version":1,"peer":"p","k":4,"k1":10,"ice_servers":[{"urls":["stun:x"]}]}"#,
            r#"{"type":"created","tree":"t","token":"s"}"#,
            r#"{"type":"joined","tree":"t","parent":"p","depth":1}"#,
            r#"{"type":"parent","parent":"p","depth":2}"#,
            r#"{"type":"child","peer":"c"}"#,
            r#"{"type":"child-gone","peer":"c"}"#,
            r#"{"type":"left"}"#,
            r#"{"type":"tree-closed","tree":"t","reason":"source-left"}"#,
            r#"{"type":"error","code":"no-such-tree","message":"m","re":"join"}"#,
            r#"{"type":"error","code":"bad-json","message":"m","re":null}"#,
        ];
        for e in evs {
            assert_eq!(Event::parse(e.as_bytes()).unwrap().to_json(), e);
        }
    }

    #[test]
    fn requests_round_trip() {
        let reqs = [
            r#"{"type":"create","k":10}"#,
            r#"{"type":"create"}"#,
            r#"{"type":"join","tree":"t","k":4,"role":"relay"}"#,
            r#"{"type":"signal","to":"p","data":{"candidate":null}}"#,
            r#"{"type":"reconnect"}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"reclaim","tree":"t","token":"s"}"#,
            r#"{"type":"stats","rx_bps":1.5,"extra":"x"}"#,
            r#"{"type":"join","tree":"t","relayed":true}"#,
            r#"{"type":"reach","relayed":false}"#,
        ];
        for r in reqs {
            assert_eq!(Request::parse(r.as_bytes()).unwrap().to_json(), r);
        }
    }

    #[test]
    fn stats_extras_are_bounded() {
        let mut fields = serde_json::Map::new();
        for i in 0..40 {
            fields.insert(format!("f{i:02}"), serde_json::json!(i));
        }
        fields.insert("big".into(), serde_json::json!("x".repeat(300)));
        fields.insert("y".repeat(300), serde_json::json!(1));
        let mut s = Stats {
            extra: fields,
            ..Stats::default()
        };
        s.trim_extra();
        assert_eq!(s.extra.len(), STATS_EXTRA_FIELDS);
        assert!(!s.extra.contains_key("big"));
        assert!(s.extra.keys().all(|k| k.len() <= STATS_EXTRA_BYTES));
    }
}
