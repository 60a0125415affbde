//! placeholder
pub mod state;
