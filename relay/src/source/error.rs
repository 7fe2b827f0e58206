use std::path::PathBuf;

/// Why a media file cannot be played. Every message is one line that starts with the
/// file's path and says what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: file is larger than the {limit}-byte limit for media files", path.display())]
    TooLarge { path: PathBuf, limit: u64 },

    #[error("{}: not {expected} file: it starts with \"{found}\" instead of \"{magic}\"", path.display())]
    BadMagic {
        path: PathBuf,
        /// "an IVF" or "an Ogg"
        expected: &'static str,
        magic: &'static str,
        found: String,
    },

    #[error("{}: file is {len} bytes, shorter than the {needed}-byte {what} header", path.display())]
    HeaderTooShort {
        path: PathBuf,
        what: &'static str,
        len: u64,
        needed: u64,
    },

    #[error(
        "{}: IVF header length field says {declared} bytes; it must be at least 32 and \
         within the {file_len}-byte file",
        path.display()
    )]
    BadHeaderLength {
        path: PathBuf,
        declared: u64,
        file_len: u64,
    },

    #[error("{}: unsupported codec {found}; supported: {supported}", path.display())]
    UnsupportedCodec {
        path: PathBuf,
        found: String,
        supported: &'static str,
    },

    #[error(
        "{}: IVF timebase {numerator}/{denominator} has a zero term, so frame times are undefined",
        path.display()
    )]
    ZeroTimebase {
        path: PathBuf,
        numerator: u32,
        denominator: u32,
    },

    #[error(
        "{}: frame {frame} at byte {offset}: truncated frame header ({remaining} of 12 bytes present)",
        path.display()
    )]
    TruncatedFrameHeader {
        path: PathBuf,
        frame: usize,
        offset: u64,
        remaining: u64,
    },

    #[error(
        "{}: frame {frame} at byte {offset} claims {size} bytes but only {remaining} remain",
        path.display()
    )]
    FrameOverrun {
        path: PathBuf,
        frame: usize,
        offset: u64,
        size: u64,
        remaining: u64,
    },

    #[error(
        "{}: frame {frame} at byte {offset} has timestamp {timestamp}, earlier than the previous frame's {previous}",
        path.display()
    )]
    TimestampBackwards {
        path: PathBuf,
        frame: usize,
        offset: u64,
        timestamp: u64,
        previous: u64,
    },

    #[error("{}: frame {frame} at byte {offset}: {reason}", path.display())]
    BadFrame {
        path: PathBuf,
        frame: usize,
        offset: u64,
        reason: String,
    },

    #[error("{}: contains no {what}", path.display())]
    NoFrames { path: PathBuf, what: &'static str },

    #[error("{}: Ogg page {page} at byte {offset}: {reason}", path.display())]
    BadOggPage {
        path: PathBuf,
        page: usize,
        offset: u64,
        reason: String,
    },

    #[error("{}: bad OpusHead: {reason}", path.display())]
    BadOpusHead { path: PathBuf, reason: String },

    #[error("{}: Opus packet {packet} (on the page at byte {offset}): {reason}", path.display())]
    BadOpusPacket {
        path: PathBuf,
        packet: usize,
        offset: u64,
        reason: String,
    },
}

/// Printable form of a magic number or fourcc: ASCII as is, anything else escaped.
pub(crate) fn printable(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}
