//! The media a session description announces: as a live sender writes one
//! (`ffmpeg ... -f rtp -sdp_file out.sdp`, GStreamer's sdp output), where
//! each RTP stream arrives, its codec and its fmtp line; as a WHIP publisher
//! offers one, the codecs of each section it sends. With the fmtp line from
//! the sender, a tree offers H.264 in the profile and packetization mode it
//! really has, instead of a default.
//!
//! Only what that needs is read (RFC 8866): `c=` at session or media level,
//! `m=` with its port and payload types, `a=rtpmap`, `a=fmtp` and the
//! direction. Everything else is skipped; nothing in the text can panic it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::media::{Codec, H264_VARIANTS};

/// One stream to receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpInput {
    pub addr: SocketAddr,
    pub codec: Codec,
    /// The sender's fmtp line, or the codec's default when it gave none.
    pub fmtp: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("line {line}: {what}")]
    Bad { line: usize, what: String },
    #[error("the {media} section on port {port} has no connection address (c=)")]
    NoAddress { media: String, port: u16 },
    #[error("no audio or video section in a codec the tree carries (VP8, VP9, AV1, H.264, Opus)")]
    NoMedia,
}

/// An audio or video section, with the formats in it the tree can carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSection {
    /// `audio` or `video`.
    pub media: String,
    /// 0 for a section the offerer turned off.
    pub port: u16,
    /// The section's `c=` address, or the session's.
    pub address: Option<IpAddr>,
    /// False when the direction is `recvonly` or `inactive`.
    pub sends: bool,
    /// (codec, fmtp line) in the offerer's order of preference; H.264 only
    /// in packetization mode 1 and a profile of [`H264_VARIANTS`].
    pub formats: Vec<(Codec, String)>,
}

#[derive(Default)]
struct Section {
    media: String,
    port: u16,
    payload_types: Vec<u8>,
    address: Option<IpAddr>,
    direction: Option<String>,
    rtpmap: HashMap<u8, String>,
    fmtp: HashMap<u8, String>,
}

/// The streams in `text`: for each audio or video section, its first
/// payload type in a codec the tree carries. Sections in other codecs are
/// left out; none at all is an error.
pub fn parse(text: &str) -> Result<Vec<RtpInput>, SdpError> {
    let mut inputs = Vec::new();
    for s in sections(text)? {
        let Some((codec, fmtp)) = s.formats.first().cloned() else {
            continue;
        };
        let ip = s.address.ok_or(SdpError::NoAddress {
            media: s.media.clone(),
            port: s.port,
        })?;
        inputs.push(RtpInput {
            addr: SocketAddr::new(ip, s.port),
            codec,
            fmtp,
        });
    }
    if inputs.is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(inputs)
}

/// Every audio and video section of `text`.
pub fn sections(text: &str) -> Result<Vec<MediaSection>, SdpError> {
    let mut session_address = None;
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let bad = |what: &str| SdpError::Bad {
            line,
            what: what.to_owned(),
        };
        let Some((kind, value)) = raw.trim_end_matches('\r').split_once('=') else {
            continue;
        };
        match kind {
            "c" => {
                let address =
                    connection_address(value).ok_or_else(|| bad("c= needs IN IP4|IP6 ADDRESS"))?;
                match sections.last_mut() {
                    Some(s) => s.address = Some(address),
                    None => session_address = Some(address),
                }
            }
            "m" => {
                let mut words = value.split_whitespace();
                let media = words.next().ok_or_else(|| bad("empty m= line"))?;
                let port = words
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("m= needs a port"))?;
                let _proto = words.next();
                sections.push(Section {
                    media: media.to_owned(),
                    port,
                    payload_types: words.filter_map(|w| w.parse().ok()).collect(),
                    ..Section::default()
                });
            }
            "a" => {
                let Some(s) = sections.last_mut() else {
                    continue;
                };
                if matches!(value, "sendrecv" | "sendonly" | "recvonly" | "inactive") {
                    s.direction = Some(value.to_owned());
                } else if let Some(rest) = value.strip_prefix("rtpmap:") {
                    let (pt, name) =
                        payload_attribute(rest).ok_or_else(|| bad("a=rtpmap:PT NAME/RATE"))?;
                    let name = name.split('/').next().unwrap_or_default();
                    s.rtpmap.insert(pt, name.to_owned());
                } else if let Some(rest) = value.strip_prefix("fmtp:") {
                    let (pt, params) =
                        payload_attribute(rest).ok_or_else(|| bad("a=fmtp:PT PARAMETERS"))?;
                    s.fmtp.insert(pt, params.trim().to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(sections
        .into_iter()
        .filter(|s| s.media == "audio" || s.media == "video")
        .map(|s| {
            let formats = s
                .payload_types
                .iter()
                .filter_map(|pt| {
                    let codec = codec_named(&s.media, s.rtpmap.get(pt)?)?;
                    let fmtp = s
                        .fmtp
                        .get(pt)
                        .cloned()
                        .unwrap_or_else(|| codec.sdp_fmtp_line().to_owned());
                    carried(codec, &fmtp).then_some((codec, fmtp))
                })
                .collect();
            MediaSection {
                address: s.address.or(session_address),
                sends: !matches!(s.direction.as_deref(), Some("recvonly" | "inactive")),
                formats,
                media: s.media,
                port: s.port,
            }
        })
        .collect())
}

/// Whether members can be offered this format: H.264 in one of the
/// variants every link registers, anything else as it is.
fn carried(codec: Codec, fmtp: &str) -> bool {
    codec != Codec::H264
        || H264_VARIANTS
            .iter()
            .any(|(v, _, _)| codec.same_format(fmtp, v))
}

/// `IN IP4 127.0.0.1` (a multicast `/ttl` suffix is left off).
fn connection_address(value: &str) -> Option<IpAddr> {
    let mut words = value.split_whitespace();
    if words.next()? != "IN" {
        return None;
    }
    let _family = words.next()?;
    words.next()?.split('/').next()?.parse().ok()
}

/// `96 H264/90000` or `96 packetization-mode=1`: the payload type and the
/// rest.
fn payload_attribute(rest: &str) -> Option<(u8, &str)> {
    let (pt, value) = rest.split_once(' ')?;
    Some((pt.trim().parse().ok()?, value))
}

/// The codec of an `a=rtpmap` encoding name, if it is of the section's kind.
fn codec_named(media: &str, name: &str) -> Option<Codec> {
    Codec::from_encoding_name(name).filter(|c| c.is_video() == (media == "video"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ffmpeg -re -i in.h264 -c copy -f rtp -sdp_file` writes.
    const FFMPEG_H264: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\n\
        c=IN IP4 127.0.0.1\r\nt=0 0\r\na=tool:libavformat 59.27.100\r\n\
        m=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
        a=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LAHtkCgL/lwFEAAAMAAQAAAwA8DxYuSA==,aMuMsg==; profile-level-id=42C01E\r\n";

    #[test]
    fn ffmpegs_h264_description_gives_its_port_and_fmtp() {
        let inputs = parse(FFMPEG_H264).expect("parses");
        assert_eq!(inputs.len(), 1);
        let i = &inputs[0];
        assert_eq!(i.addr, SocketAddr::from(([127, 0, 0, 1], 5004)));
        assert_eq!(i.codec, Codec::H264);
        assert!(i.fmtp.ends_with("profile-level-id=42C01E"), "{}", i.fmtp);
        // Same profile (0x42) and mode as the tree's default H.264 line.
        assert!(Codec::H264.same_format(&i.fmtp, Codec::H264.sdp_fmtp_line()));
    }

    #[test]
    fn video_and_audio_sections_with_their_own_addresses() {
        let sdp = "v=0\nc=IN IP4 0.0.0.0\nm=video 5004 RTP/AVP 97 96\n\
            a=rtpmap:97 H265/90000\na=rtpmap:96 VP8/90000\n\
            m=audio 5006 RTP/AVP 111\nc=IN IP4 127.0.0.1\na=rtpmap:111 opus/48000/2\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\n";
        let inputs = parse(sdp).expect("parses");
        let got: Vec<(String, Codec, String)> = inputs
            .iter()
            .map(|i| (i.addr.to_string(), i.codec, i.fmtp.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("0.0.0.0:5004".into(), Codec::Vp8, String::new()),
                (
                    "127.0.0.1:5006".into(),
                    Codec::Opus,
                    Codec::Opus.sdp_fmtp_line().into()
                ),
            ]
        );
    }

    #[test]
    fn mistakes_are_errors_that_name_the_line() {
        assert_eq!(
            parse("v=0\nm=video x RTP/AVP 96\n"),
            Err(SdpError::Bad {
                line: 2,
                what: "m= needs a port".into()
            })
        );
        assert_eq!(
            parse("m=video 5004 RTP/AVP 96\na=rtpmap:96 VP8/90000\n"),
            Err(SdpError::NoAddress {
                media: "video".into(),
                port: 5004
            })
        );
        assert_eq!(
            parse("c=IN IP4 127.0.0.1\nm=video 5004 RTP/AVP 96\na=rtpmap:96 MP4V-ES/90000\n"),
            Err(SdpError::NoMedia)
        );
        assert!(matches!(
            parse("c=IN IP4 nowhere\n"),
            Err(SdpError::Bad { line: 1, .. })
        ));
        assert_eq!(parse(""), Err(SdpError::NoMedia));
        assert!(matches!(
            parse("m=\u{0}\u{ffff}\na=rtpmap:\n"),
            Err(SdpError::Bad { .. })
        ));
    }
}
