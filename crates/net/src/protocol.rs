//! Protocol naming: every stream protocol of ours is `/playergold/<network>/<protocol>/<version>`.
//!
//! Carrying the network name in every protocol id means two nodes of different networks (say
//! `mainnet` and `testnet`) never agree on a protocol during multistream-select, so their
//! messages cannot mix even if they happen to connect. The genesis check itself belongs to the
//! sync handshake.

use std::fmt;

use libp2p::StreamProtocol;

/// Longest accepted network name, in bytes. Protocol ids travel in every stream negotiation and
/// multistream-select caps a protocol id at 140 bytes; 32 leaves room for the rest of the id.
pub const MAX_NETWORK_NAME_LEN: usize = 32;

/// Errors from building protocol names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The network name is empty, too long or holds characters other than `[a-z0-9-]`.
    #[error(
        "network name {0:?} is invalid: use 1 to {MAX_NETWORK_NAME_LEN} characters from a-z, 0-9 and '-'"
    )]
    InvalidNetworkName(String),
    /// A protocol name or version part is empty or holds characters other than `[a-z0-9.-]`.
    #[error("protocol part {0:?} is invalid: use characters from a-z, 0-9, '.' and '-'")]
    InvalidPart(String),
}

/// The name of a PlayerGold network (`mainnet`, `testnet`, ...), validated: 1 to
/// [`MAX_NETWORK_NAME_LEN`] characters from `[a-z0-9-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetworkName(String);

impl NetworkName {
    /// Parses and validates a network name.
    pub fn new(name: impl Into<String>) -> Result<Self, ProtocolError> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_NETWORK_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(name))
        } else {
            Err(ProtocolError::InvalidNetworkName(name))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Builds the stream protocol id `/playergold/<network>/<protocol>/<version>`.
///
/// `protocol` and `version` must be non-empty and use `[a-z0-9.-]`.
pub fn protocol_name(
    network: &NetworkName,
    protocol: &str,
    version: &str,
) -> Result<StreamProtocol, ProtocolError> {
    for part in [protocol, version] {
        if !valid_part(part) {
            return Err(ProtocolError::InvalidPart(part.to_owned()));
        }
    }
    let id = format!("/playergold/{network}/{protocol}/{version}");
    StreamProtocol::try_from_owned(id.clone()).map_err(|_| ProtocolError::InvalidPart(id))
}

/// The identify `protocol_version` string of a network: `/playergold/<network>/1.0.0`. A peer
/// announcing another value belongs to another network and is disconnected.
pub fn identify_protocol_version(network: &NetworkName) -> String {
    format!("/playergold/{network}/1.0.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_carry_the_network() {
        let main = NetworkName::new("mainnet").expect("valid name");
        let test = NetworkName::new("testnet").expect("valid name");
        let a = protocol_name(&main, "addr", "1").expect("valid parts");
        let b = protocol_name(&test, "addr", "1").expect("valid parts");
        assert_eq!(a.as_ref(), "/playergold/mainnet/addr/1");
        assert_ne!(a, b);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(NetworkName::new("").is_err());
        assert!(NetworkName::new("Main/net").is_err());
        assert!(NetworkName::new("a".repeat(MAX_NETWORK_NAME_LEN + 1)).is_err());
        let net = NetworkName::new("devnet").expect("valid name");
        assert!(protocol_name(&net, "a/b", "1").is_err());
        assert!(protocol_name(&net, "sync", "").is_err());
    }
}
