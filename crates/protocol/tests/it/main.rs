//! Whole networks of relay engines on a simulated clock.

mod codec;
mod hostile;
mod partition;
mod propagation;
mod reputation;
mod sim;
mod sync;
