//! The media engine (upstream, fan-out, feedback, source, record) lands with the relay issue.
