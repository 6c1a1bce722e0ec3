//! Integration tests of the bench: one binary, one module per area.

mod smoke;
