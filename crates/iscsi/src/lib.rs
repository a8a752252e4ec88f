//! The iSCSI protocol core of rbdgw, free of I/O.
//!
//! Bytes go in, PDUs and decisions come out; the tokio driver in the `gateway` crate owns the
//! sockets. Everything here is driven by unit tests and fuzzers without a network.
//!
//! * [`pdu`]: the Basic Header Segment and the PDU framing of RFC 7143 §11, digests included.
//! * [`text`]: `key=value` text data segments (RFC 7143 §6).
//! * [`params`]: operational parameter negotiation (RFC 7143 §13).
//! * [`chap`]: CHAP authentication (RFC 7143 §12.1.3, RFC 1994).
//! * [`login`]: the target side of the login phase (RFC 7143 §6).
//! * [`seq`]: serial number arithmetic (RFC 7143 §4.2.2, RFC 1982).

pub mod chap;
pub mod dataout;
pub mod login;
pub mod params;
pub mod pdu;
pub mod seq;
pub mod text;

pub use pdu::{Bhs, Opcode, Pdu, PduDecoder, PduError};
