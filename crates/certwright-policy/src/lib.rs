//! Pure evaluation of certwright's `IssuancePolicy` against cert-manager
//! `CertificateRequest`s: no I/O and no API server, so the controller's approver, the
//! webhook and `certwright policy test` give the same answer for the same inputs.
//!
//! - [`RequestFacts`] reads what a policy looks at from a request and its CSR.
//! - [`Policy::compile`] makes a policy ready; [`validate`] names every bad field.
//! - [`PolicySet::applicable`] and [`decide`] give the [`Verdict`]: approve, deny with
//!   every [`Violation`], leave for a person, or wait for a change ticket.
//! - [`ticket`] reads ticket ids, URLs and ticket systems' answers.
//! - [`summary`] writes the per-namespace summary of the policies that apply there.
//!
//! ```
//! use std::sync::Arc;
//! use certwright_policy::{Evaluation, Policy, PolicySet, RequestFacts, Verdict};
//! # fn demo(spec: certwright_api::IssuancePolicySpec, facts: RequestFacts) {
//! let set = PolicySet::new([Arc::new(Policy::compile("payments-base", &spec))]);
//! match set.evaluate(&facts, None, Evaluation::All) {
//!     Verdict::Denied { violations } => println!("{}", Verdict::denial_message(&violations)),
//!     other => println!("{other:?}"),
//! }
//! # }
//! ```
#![deny(missing_docs)]

mod evaluate;
mod policy;
mod request;
pub mod summary;
pub mod ticket;
pub mod wildcard;

pub use evaluate::{Evaluation, PolicySet, TicketDue, Verdict, Violation, check, decide};
pub use policy::{MAX_VALUES, Policy, known_usage, validate};
pub use request::{
    CERT_MANAGER_DEFAULT_DURATION, CERT_MANAGER_DEFAULT_USAGES, FactsError, Issuer, KeyFacts,
    RequestFacts, Requester, extended_key_usage_name, key_usage_name, short_duration,
};
