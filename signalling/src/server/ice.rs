//! ICE server URLs as an operator writes them, credentials included.
//!
//! RTCIceServer keeps a TURN server's username and credential beside its URL,
//! not in it (RFC 7065 `turn:` URIs have no userinfo), and browsers refuse a
//! URL that carries them. So `turn:USER:CREDENTIAL@HOST` is split here: the
//! URL that `hello` carries loses the userinfo, and the two parts become the
//! entry's `username` and `credential`.

use percent_encoding::percent_decode_str;

use crate::protocol::IceServer;

/// A URL that is no ICE server URL; says what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ICE server URL {url:?} {problem}")]
pub struct IceUrlError {
    /// The URL as given, with any credentials replaced by `***`: errors end
    /// up in logs and terminals.
    pub url: String,
    pub problem: IceUrlProblem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IceUrlProblem {
    #[error("must start with stun:, stuns:, turn: or turns:")]
    Scheme,
    #[error("has // after the scheme: write turn:HOST:PORT, not turn://HOST:PORT")]
    Slashes,
    #[error("carries credentials, which only turn: and turns: URLs take")]
    StunCredentials,
    #[error("must give credentials as USER:CREDENTIAL@ with neither part empty")]
    Userinfo,
    #[error(
        "has credentials that are not percent-encoded UTF-8 (write @ as %40, % as %25, \
         and : in the user name as %3A)"
    )]
    Encoding,
    #[error("has no host (or a malformed one)")]
    Host,
    #[error("has a port that is not a number from 1 to 65535")]
    Port,
    #[error("has a query other than ?transport=udp or ?transport=tcp (TURN only)")]
    Query,
}

/// Whether a URL names a TURN server (whose entries need credentials).
fn is_turn_url(url: &str) -> bool {
    url.starts_with("turn:") || url.starts_with("turns:")
}

/// A TURN entry with neither username nor credential: a TURN server would
/// refuse every peer that used it as it stands.
pub fn lacks_credentials(server: &IceServer) -> bool {
    server.urls.iter().any(|u| is_turn_url(u))
        && server.username.is_none()
        && server.credential.is_none()
}

/// Parses `stun:HOST[:PORT]`, `stuns:...`, or
/// `turn:[USER:CREDENTIAL@]HOST[:PORT][?transport=udp|tcp]` (or `turns:`)
/// into one `hello` entry. USER and CREDENTIAL are percent-decoded; HOST may
/// be a name, an IPv4 address or a bracketed IPv6 address.
pub fn parse_ice_url(text: &str) -> Result<IceServer, IceUrlError> {
    let fail = |problem| IceUrlError {
        url: redacted(text),
        problem,
    };
    let (scheme, rest) = text
        .split_once(':')
        .ok_or_else(|| fail(IceUrlProblem::Scheme))?;
    let turn = match scheme {
        "stun" | "stuns" => false,
        "turn" | "turns" => true,
        _ => return Err(fail(IceUrlProblem::Scheme)),
    };
    if rest.starts_with("//") {
        return Err(fail(IceUrlProblem::Slashes));
    }
    // The last `@`: a credential with an unencoded `@` still parses, while
    // a host can hold none.
    let (userinfo, location) = match rest.rsplit_once('@') {
        Some((u, l)) => (Some(u), l),
        None => (None, rest),
    };
    let (authority, query) = match location.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (location, None),
    };
    check_authority(authority).map_err(fail)?;
    match query {
        None => {}
        Some("transport=udp" | "transport=tcp") if turn => {}
        Some(_) => return Err(fail(IceUrlProblem::Query)),
    }
    let (username, credential) = match userinfo {
        None => (None, None),
        Some(_) if !turn => return Err(fail(IceUrlProblem::StunCredentials)),
        Some(u) => {
            let (user, cred) = u
                .split_once(':')
                .ok_or_else(|| fail(IceUrlProblem::Userinfo))?;
            let user = decode(user).map_err(fail)?;
            let cred = decode(cred).map_err(fail)?;
            (Some(user), Some(cred))
        }
    };
    Ok(IceServer {
        urls: vec![format!("{scheme}:{location}")],
        username,
        credential,
    })
}

/// `HOST[:PORT]`, HOST a name, an IPv4 address or `[IPv6]`.
fn check_authority(authority: &str) -> Result<(), IceUrlProblem> {
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or(IceUrlProblem::Host)?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(IceUrlProblem::Host);
        }
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(IceUrlProblem::Host)?),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if host.is_empty() || !host.chars().all(name) {
            return Err(IceUrlProblem::Host);
        }
        port
    };
    if let Some(p) = port {
        let valid = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n != 0);
        if !valid {
            return Err(IceUrlProblem::Port);
        }
    }
    Ok(())
}

fn decode(part: &str) -> Result<String, IceUrlProblem> {
    let text = percent_decode_str(part)
        .decode_utf8()
        .map_err(|_| IceUrlProblem::Encoding)?;
    if text.is_empty() {
        return Err(IceUrlProblem::Userinfo);
    }
    Ok(text.into_owned())
}

/// The URL with whatever precedes the host's `@` replaced by `***`.
fn redacted(text: &str) -> String {
    match (text.split_once(':'), text.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, location))) => format!("{scheme}:***@{location}"),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An `ice_servers` entry with one URL (for the tests of turn.rs too).
    pub(crate) fn entry(url: &str, user: Option<&str>, cred: Option<&str>) -> IceServer {
        IceServer {
            urls: vec![url.to_owned()],
            username: user.map(str::to_owned),
            credential: cred.map(str::to_owned),
        }
    }

    #[test]
    fn good_forms() {
        let cases = [
            (
                "stun:stun.example.org",
                entry("stun:stun.example.org", None, None),
            ),
            (
                "stuns:192.0.2.9:5349",
                entry("stuns:192.0.2.9:5349", None, None),
            ),
            (
                "turn:turn.example.org",
                entry("turn:turn.example.org", None, None),
            ),
            (
                "turn:alice:s3cret@turn.example.org:3478",
                entry("turn:turn.example.org:3478", Some("alice"), Some("s3cret")),
            ),
            (
                "turns:alice:pa%40ss%3Aw%25rd@[2001:db8::1]:5349?transport=tcp",
                entry(
                    "turns:[2001:db8::1]:5349?transport=tcp",
                    Some("alice"),
                    Some("pa@ss:w%rd"),
                ),
            ),
            (
                // Unencoded ':' in the credential and '@' before the last one.
                "turn:b%C3%B6b:a:b@c@198.51.100.7?transport=udp",
                entry(
                    "turn:198.51.100.7?transport=udp",
                    Some("böb"),
                    Some("a:b@c"),
                ),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_ice_url(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_forms() {
        use IceUrlProblem::*;
        let cases = [
            ("http://turn.example.org", Scheme),
            ("turn.example.org:3478", Scheme),
            ("TURN:turn.example.org", Scheme),
            ("turn://u:p@turn.example.org", Slashes),
            ("stun:u:p@stun.example.org", StunCredentials),
            ("turn:alice@turn.example.org", Userinfo),
            ("turn::secret@turn.example.org", Userinfo),
            ("turn:alice:@turn.example.org", Userinfo),
            ("turn:alice:%FF@turn.example.org", Encoding),
            ("turn:", Host),
            ("turn:u:p@", Host),
            ("turn:u:p@:3478", Host),
            ("turn:turn example.org", Host),
            ("turn:turn.example.org/path", Host),
            ("turn:[2001:db8::1", Host),
            ("turn:[not-v6]:3478", Host),
            ("turn:turn.example.org:0", Port),
            ("turn:turn.example.org:65536", Port),
            ("turn:turn.example.org:+1", Port),
            ("turn:turn.example.org:", Port),
            ("turn:turn.example.org?transport=sctp", Query),
            ("turn:turn.example.org?x=1", Query),
            ("stun:stun.example.org?transport=udp", Query),
        ];
        for (text, problem) in cases {
            let err = parse_ice_url(text).expect_err(text);
            assert_eq!(err.problem, problem, "{text}");
        }
    }

    #[test]
    fn errors_never_show_the_credential() {
        let err = parse_ice_url("turn:alice:hunter2@turn.example.org:99999").unwrap_err();
        assert_eq!(err.problem, IceUrlProblem::Port);
        let text = err.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("alice"),
            "{text}"
        );
        assert!(text.contains("turn:***@turn.example.org:99999"), "{text}");
    }

    #[test]
    fn only_turn_entries_without_credentials_lack_them() {
        assert!(lacks_credentials(&entry("turn:h", None, None)));
        assert!(lacks_credentials(&entry("turns:h", None, None)));
        assert!(!lacks_credentials(&entry("turn:h", Some("u"), Some("p"))));
        assert!(!lacks_credentials(&entry("stun:h", None, None)));
    }
}
