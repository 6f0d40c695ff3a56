//! The example backend as a third party tests it.

mod conformance;
