//! What a node offers the network, declared in config and advertised to peers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A set of capabilities, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Capabilities(u8);

impl Capabilities {
    /// No capabilities.
    pub const NONE: Capabilities = Capabilities(0);
    /// Runs AI work: receives challenges, solves and validates solutions.
    pub const AI_COMPUTE: Capabilities = Capabilities(1);
    /// Produces blocks.
    pub const VALIDATOR: Capabilities = Capabilities(2);
    /// Keeps and serves the full history.
    pub const ARCHIVE: Capabilities = Capabilities(4);

    const NAMES: [(Capabilities, &'static str); 3] = [
        (Capabilities::AI_COMPUTE, "ai-compute"),
        (Capabilities::VALIDATOR, "validator"),
        (Capabilities::ARCHIVE, "archive"),
    ];

    /// Whether every capability of `other` is in `self`.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union.
    pub fn with(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// The raw bits (unknown bits from newer peers are kept, not interpreted).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// From raw bits.
    pub fn from_bits(bits: u8) -> Capabilities {
        Capabilities(bits)
    }

    /// Parses a name (`ai-compute`, `validator`, `archive`).
    pub fn parse(name: &str) -> Option<Capabilities> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| *c)
    }

    /// The names of the capabilities held.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}
