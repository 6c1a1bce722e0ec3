//! PlayerGold networking: transports, identity, connection management (in progress, issue 3).
