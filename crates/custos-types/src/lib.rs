//! Shared vocabulary for every Custos crate: identifiers, capabilities, the
//! injected clock and secret wrappers. This crate does no IO.

mod capability;
mod clock;
mod request_id;
mod usage;

pub use capability::{Capability, CapabilitySet, ParseCapabilityError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use request_id::RequestId;
pub use secrecy::{ExposeSecret, SecretString};
pub use usage::{Usage, UsageSource};
