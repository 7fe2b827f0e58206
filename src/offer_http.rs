//! The HTTP of WHIP (RFC 9725) and WHEP in front of a node's sessions
//! (relay::offer_sessions): `POST /whip` (or `/whep`) with an SDP offer,
//! `PATCH` and `DELETE` on the session URL it returns. Status codes are the
//! RFC's: 201 with the answer, a Location and an ETag, 204 for trickled
//! candidates, 200 with this end's new fragment for an ICE restart (a PATCH
//! with new credentials), 200 for DELETE; 415 for another content type,
//! 400 for a body that is not SDP, 413 past 64 KiB, 422 for SDP the node
//! cannot take, 401 without the bearer token, 409 while the session's
//! resource is held (another publisher; nothing to play yet), 503 when
//! every slot is taken, 404 for an unknown session, 412 for a PATCH whose
//! `If-Match` is not the session's current entity tag.
//!
//! Sessions are bounded (one publisher; `--whep-max` players) before any
//! peer connection is made, so a flood of POSTs costs no sockets; the HTTP
//! connections themselves are not capped per address as the signalling
//! server's are.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::Router;
use relay::offer_sessions::{OfferSessions, SessionError};
use tracing::{info, warn};

/// Largest offer or fragment taken. Browsers' offers are 5-10 KB.
const MAX_BODY: usize = 64 * 1024;

const SDP: &str = "application/sdp";
const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";

/// How long a player told 409 (nothing to play yet) or 503 (full) should
/// wait before it tries again.
const RETRY_AFTER_SECONDS: &str = "5";

/// WHIP or WHEP.
#[derive(Clone, Copy)]
pub(crate) enum Protocol {
    Whip,
    Whep,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Whip => "WHIP",
            Protocol::Whep => "WHEP",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Protocol::Whip => "/whip",
            Protocol::Whep => "/whep",
        }
    }
}

struct Endpoint {
    protocol: Protocol,
    sessions: Arc<dyn OfferSessions>,
    token: Option<String>,
}

/// Binds `addr` for `protocol`; fails at once when the address is taken.
pub(crate) async fn bind(addr: SocketAddr, protocol: Protocol) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {} on {addr}", protocol.name()))
}

/// Serves `sessions` on `listener` until the process ends; returns the
/// endpoint's URL.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    protocol: Protocol,
    sessions: Arc<dyn OfferSessions>,
    token: Option<String>,
) -> Result<String> {
    let url = format!("http://{}{}", listener.local_addr()?, protocol.path());
    let endpoint = Arc::new(Endpoint {
        protocol,
        sessions,
        token,
    });
    let app = Router::new()
        .route(protocol.path(), post(offer).options(options))
        .route(
            &format!("{}/{{id}}", protocol.path()),
            patch(trickle).delete(end).options(options),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(endpoint);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!("the {} endpoint stopped: {e}", protocol.name());
        }
    });
    Ok(url)
}

/// A plain-text error, with CORS so a page's publisher can read it.
fn error(status: StatusCode, why: impl Into<String>) -> Response {
    let mut r = (status, format!("{}\n", why.into())).into_response();
    cors(r.headers_mut());
    r
}

fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag"),
    );
}

/// What every request must carry: the bearer token, if one is set.
fn authorized(endpoint: &Endpoint, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &endpoint.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.map(str::trim) == Some(token.as_str()) {
        return Ok(());
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "this endpoint needs `Authorization: Bearer <token>` with the node's token",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(r))
}

/// The body as text of content type `want`.
fn body_of(headers: &HeaderMap, body: &Bytes, want: &str) -> Result<String, Box<Response>> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(want) {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {want}, not {given:?}"),
        )));
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| Box::new(error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text")))
}

fn session_error(protocol: Protocol, e: SessionError) -> Response {
    let status = match &e {
        SessionError::Busy(_) => StatusCode::CONFLICT,
        SessionError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
        SessionError::Unusable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        SessionError::NoSession => StatusCode::NOT_FOUND,
        SessionError::TagMismatch { .. } => StatusCode::PRECONDITION_FAILED,
        SessionError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        warn!("{}: {e}", protocol.name());
    } else {
        info!("{}: refused ({}): {e}", protocol.name(), status.as_u16());
    }
    let mut r = error(status, e.to_string());
    if matches!(e, SessionError::Busy(_) | SessionError::Full(_)) {
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    r
}

async fn offer(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorized(&endpoint, &headers) {
        return *r;
    }
    let offer = match body_of(&headers, &body, SDP) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    if !offer.starts_with("v=0") {
        return error(
            StatusCode::BAD_REQUEST,
            "the body is not an SDP offer (it must start with v=0)",
        );
    }
    match endpoint.sessions.open(&offer).await {
        Ok(opened) => {
            let mut r = (StatusCode::CREATED, opened.answer).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
            let location = format!("{}/{}", endpoint.protocol.path(), opened.id);
            if let Ok(location) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, location);
            }
            // Sessions support ICE restarts, so they carry a tag (§4.3.1).
            if let Ok(tag) = HeaderValue::from_str(&opened.tag) {
                h.insert(header::ETAG, tag);
            }
            cors(h);
            r
        }
        Err(e) => session_error(endpoint.protocol, e),
    }
}

async fn trickle(
    State(endpoint): State<Arc<Endpoint>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&endpoint, &headers) {
        return *r;
    }
    let fragment = match body_of(&headers, &body, SDP_FRAGMENT) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    // A client that sends none is let through: RFC 9725 asks clients for
    // it, and a session has one ICE session at a time anyway.
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    let mut r = match endpoint.sessions.patch(&id, &fragment, if_match).await {
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        // An ICE restart: this end's new fragment (RFC 9725 §4.3.3).
        Ok(Some(restarted)) => {
            let mut r = (StatusCode::OK, restarted.fragment).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP_FRAGMENT));
            if let Ok(tag) = HeaderValue::from_str(&restarted.tag) {
                r.headers_mut().insert(header::ETAG, tag);
            }
            r
        }
        Err(e) => return session_error(endpoint.protocol, e),
    };
    cors(r.headers_mut());
    r
}

async fn end(
    State(endpoint): State<Arc<Endpoint>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&endpoint, &headers) {
        return *r;
    }
    match endpoint.sessions.end(&id).await {
        Ok(()) => {
            let mut r = StatusCode::OK.into_response();
            cors(r.headers_mut());
            r
        }
        Err(e) => session_error(endpoint.protocol, e),
    }
}

/// CORS preflight and discovery (RFC 9725 §4.2, the same in WHEP).
async fn options() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    cors(h);
    h.insert("accept-post", HeaderValue::from_static(SDP));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    r
}
