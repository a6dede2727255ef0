//! Token usage of one request, as recorded in metrics and the audit log.

use serde::{Deserialize, Serialize};

/// Where a usage figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// Reported by the upstream in its response.
    Upstream,
    /// Counted by Custos with a tiktoken-compatible tokenizer because the
    /// upstream reported none.
    Estimated,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt or input.
    pub prompt_tokens: u64,
    /// Tokens generated (0 for embeddings).
    pub completion_tokens: u64,
    /// Prompt plus completion, as reported.
    pub total_tokens: u64,
    /// Where the figures came from.
    pub source: UsageSource,
}

impl Usage {
    /// Usage counted by Custos itself.
    pub fn estimated(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            source: UsageSource::Estimated,
        }
    }
}
