//! `agentkeys audit`: the signed-in master's audit log, following the broker's pages.

use std::io::Write;

use agentkeys_types::api::AuditEventInfo;

use crate::client::sanitize;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::output::emit;
use crate::pairing::AgentRef;

/// The broker's largest page.
const MAX_PAGE: u32 = 1000;

#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub kind: Option<String>,
    pub agent: Option<String>,
    pub since: Option<String>,
    /// Total events to print; all when `None`.
    pub limit: Option<u32>,
}

/// One safe line: control characters replaced, long details cut.
pub fn line(e: &AuditEventInfo) -> String {
    format!(
        "{}  {}  {}  {}  {}  {}\n",
        e.seq,
        sanitize(&e.time, 40),
        sanitize(&e.kind, 64),
        sanitize(&e.outcome, 32),
        sanitize(e.actor.as_deref().unwrap_or("-"), 64),
        sanitize(&e.details.to_string(), 300)
    )
}

/// Runs `agentkeys audit`.
pub(crate) async fn run(
    ctx: &Context,
    filters: Filters,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    if filters.limit == Some(0) {
        return Err(Error::InvalidInput("--limit must be at least 1".into()));
    }
    let (_, saved, client) = ctx.session()?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(kind) = &filters.kind {
        query.push(("kind", kind.clone()));
    }
    if let Some(since) = &filters.since {
        query.push(("since", since.clone()));
    }
    if let Some(agent) = &filters.agent {
        let omni = match AgentRef::parse(agent)? {
            AgentRef::Omni(o) => o.to_string(),
            wanted @ AgentRef::Label(_) => {
                let list = client.agents(&saved.session_token).await?;
                wanted
                    .find(&list.agents)
                    .ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "you have no agent {wanted}; see `agentkeys agents list`"
                        ))
                    })?
                    .agent_omni
                    .clone()
            }
        };
        query.push(("agent", omni));
    }
    let mut remaining = filters.limit;
    let mut after = 0u64;
    loop {
        let size = remaining.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let mut q = query.clone();
        q.push(("after", after.to_string()));
        q.push(("limit", size.to_string()));
        let page = client.audit_page(&saved.session_token, &q).await?;
        for e in &page.events {
            if json {
                // serde_json escapes control characters, so each object stays one line.
                let text = serde_json::to_string(e).unwrap_or_default();
                emit(out, &format!("{text}\n"))?;
            } else {
                emit(out, &line(e))?;
            }
        }
        if let Some(r) = &mut remaining {
            *r = r.saturating_sub(page.events.len() as u32);
            if *r == 0 {
                break;
            }
        }
        match page.next {
            // A cursor that does not move would loop forever.
            Some(next) if next > after => after = next,
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_safe_line() {
        let e = AuditEventInfo {
            seq: 7,
            time: "2025-01-01T00:00:00Z".into(),
            kind: "mint\n".into(),
            actor: None,
            outcome: "ok".into(),
            details: serde_json::json!({"label": "a\u{1b}[31mb\nc"}),
            hash: "0".repeat(64),
        };
        let l = line(&e);
        assert_eq!(l.matches('\n').count(), 1);
        assert!(!l.contains('\u{1b}'));
        assert!(l.starts_with("7  2025-01-01T00:00:00Z  mint"));
    }
}
