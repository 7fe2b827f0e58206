//! WHIP's HTTP (RFC 9725) in front of the source's ingest (relay::whip):
//! `POST /whip` with an SDP offer, `PATCH` and `DELETE` on the session URL
//! it returns. Status codes are the RFC's: 201 with the answer and a
//! Location, 204 for trickled candidates, 200 for DELETE; 415 for another
//! content type, 400 for a body that is not SDP, 413 past 64 KiB, 422 for
//! SDP the tree cannot take, 401 without the bearer token, 409 while
//! another publisher is live, 404 for an unknown session.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::Router;
use relay::whip::{WhipError, WhipIngest};
use tracing::{info, warn};

/// Largest offer or fragment taken. Browsers' offers are 5-10 KB.
const MAX_BODY: usize = 64 * 1024;

const SDP: &str = "application/sdp";
const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";

struct Endpoint {
    ingest: Arc<WhipIngest>,
    token: Option<String>,
}

/// Serves WHIP on `addr` until the process ends; returns the endpoint URL.
pub(crate) async fn serve(
    addr: SocketAddr,
    ingest: Arc<WhipIngest>,
    token: Option<String>,
) -> Result<String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for WHIP on {addr}"))?;
    let url = format!("http://{}/whip", listener.local_addr()?);
    let endpoint = Arc::new(Endpoint { ingest, token });
    let app = Router::new()
        .route("/whip", post(offer).options(options))
        .route("/whip/{id}", patch(trickle).delete(end).options(options))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(endpoint);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!("the WHIP endpoint stopped: {e}");
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
        HeaderValue::from_static("Location"),
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
        "this endpoint needs `Authorization: Bearer <token>` with the source's --whip-token",
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

fn whip_error(e: WhipError) -> Response {
    let status = match &e {
        WhipError::Busy => StatusCode::CONFLICT,
        WhipError::Unusable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        WhipError::NoSession => StatusCode::NOT_FOUND,
        WhipError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        warn!("WHIP: {e}");
    } else {
        info!("WHIP: refused ({}): {e}", status.as_u16());
    }
    error(status, e.to_string())
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
    match endpoint.ingest.publish(&offer).await {
        Ok((id, answer)) => {
            let mut r = (StatusCode::CREATED, answer).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
            if let Ok(location) = HeaderValue::from_str(&format!("/whip/{id}")) {
                h.insert(header::LOCATION, location);
            }
            cors(h);
            r
        }
        Err(e) => whip_error(e),
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
    match endpoint.ingest.trickle(&id, &fragment).await {
        Ok(()) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            cors(r.headers_mut());
            r
        }
        Err(e) => whip_error(e),
    }
}

async fn end(
    State(endpoint): State<Arc<Endpoint>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&endpoint, &headers) {
        return *r;
    }
    match endpoint.ingest.end(&id).await {
        Ok(()) => {
            let mut r = StatusCode::OK.into_response();
            cors(r.headers_mut());
            r
        }
        Err(e) => whip_error(e),
    }
}

/// CORS preflight and discovery (RFC 9725 §4.2).
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
