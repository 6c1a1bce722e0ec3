//! Whole networks of relay engines on a simulated clock.

mod codec;
mod propagation;
mod sim;
mod sync;
