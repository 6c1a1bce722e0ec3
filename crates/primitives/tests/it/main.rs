//! Integration tests of the primitives: codec round trips and hostile decoding.

mod codec;
