//! End-to-end tests through the real `playergold` binary.

mod single_node;
