//! kiln-train's error type: the errors of the crates below pass through with their one-line
//! messages; what the loop and the evaluator refuse themselves is a [`TrainError::Refused`].

pub type Result<T> = std::result::Result<T, TrainError>;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    #[error(transparent)]
    Nn(#[from] kiln_nn::NnError),
    #[error(transparent)]
    Data(#[from] kiln_data::DataError),
    #[error(transparent)]
    Run(#[from] kiln_run::RunError),
    #[error(transparent)]
    Metric(#[from] kiln_eval::frechet::MetricError),
    /// A loss that was NaN or infinite stopped the run at `step`.
    #[error("step {step}: {name} is {value}")]
    Diverged {
        step: u64,
        name: &'static str,
        value: f64,
    },
    /// A request that cannot be carried out as asked (a setting the model does not have, a
    /// checkpoint of another model, a run that diverged), in words for the user.
    #[error("{0}")]
    Refused(String),
}

impl TrainError {
    pub fn refused(message: impl Into<String>) -> TrainError {
        TrainError::Refused(message.into())
    }
}
