//! The JSON documents of the API, built from the aggregation; one module per document, the
//! pieces they share in `parts`. Field names here are the API contract (docs/openapi.json
//! describes them; the end-to-end tests check the two agree).
//!
//! The documents are owned and read back as well as written, so that clients (the CLI) read
//! the very types the daemon serves: a renamed or missing field is an error there, not a zero.

use serde::{Deserialize, Deserializer};

mod alerts;
mod diagnosis;
mod error;
mod health;
mod parts;
mod process;
mod processes;
mod status;
#[cfg(test)]
mod tests;

pub use alerts::{Alert, alerts};
pub use diagnosis::{Diagnosis, Finding, FindingList, ProcessFinding, diagnosis, findings};
pub use error::ApiError;
pub use health::Health;
pub use parts::{
    Bucket, CloseWait, ConnectFailures, HandshakeMs, IdleCloseSeconds, InheritedFrom, LifetimeSeconds, MsBucket,
    RequestsPerConnection, Sockets, Tls, TlsCounts,
};
pub use process::{Inbound, Outbound, ProcessDetail, Reuse, process_detail};
pub use processes::{ProcessSummary, process_list, process_summary, process_totals};
pub use status::{FeatureStatus, Status, status};

/// Reads a nullable field that must be there: serde takes a missing `Option` field for null,
/// which would hide a renamed one.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::deserialize(d)
}
