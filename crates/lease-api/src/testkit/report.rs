//! The outcome of a conformance run.

use std::fmt;

use super::Case;

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Which case ran.
    pub case: Case,
    /// `Err` holds what the backend did wrong.
    pub outcome: Result<(), String>,
}

/// Every case's outcome; [`assert_passed`](Self::assert_passed) panics on any failure.
#[derive(Debug, Clone)]
pub struct ConformanceReport {
    results: Vec<CaseResult>,
}

impl ConformanceReport {
    pub(crate) fn new(results: Vec<CaseResult>) -> Self {
        Self { results }
    }

    /// All results in run order.
    pub fn results(&self) -> &[CaseResult] {
        &self.results
    }

    /// The cases that failed.
    pub fn failed_cases(&self) -> Vec<Case> {
        self.results
            .iter()
            .filter(|r| r.outcome.is_err())
            .map(|r| r.case)
            .collect()
    }

    /// Panics, listing every failed case, unless all passed.
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(
            self.failed_cases().is_empty(),
            "lease conformance failed:\n{self}"
        );
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for result in &self.results {
            match &result.outcome {
                Ok(()) => writeln!(f, "  ok   {}", result.case.name())?,
                Err(why) => writeln!(f, "  FAIL {}: {why}", result.case.name())?,
            }
        }
        Ok(())
    }
}
