//! The engine's errors.

/// Why the engine stopped or an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call to the Kubernetes API server failed.
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },
    /// This replica lost the leader lease; it stopped signing at once.
    #[error("lost the leader lease")]
    LeadershipLost,
    /// A task of the engine failed unexpectedly.
    #[error("engine task failed: {message}")]
    Task {
        /// What the runtime reported.
        message: String,
    },
}

impl Error {
    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// A stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::LeadershipLost => "leadership_lost",
            Error::Task { .. } => "task",
        }
    }
}

/// The HTTP status code of an API error, if it is one.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
