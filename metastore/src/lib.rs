//! placeholder
pub mod error;
pub mod state;
pub mod store;
pub mod types;
