//! What the `grants` and `requests` command groups both say about a grant: the duration syntax
//! of `--expires-in` / `--ttl` and the text printed when a grant is created (by `grants create`
//! or an approved access request). A leaf: imports no command module.

use agentkeys_types::api::GrantInfo;

use crate::client::sanitize;
use crate::error::{Error, Result};

/// The broker refuses grants longer than a year; said here before asking it.
pub const MAX_GRANT_SECONDS: u64 = 365 * 86_400;

/// `90s`, `15m`, `12h`, `7d`, `2w` (or bare seconds) → seconds, 1 s to a year.
pub fn parse_duration(input: &str) -> Result<u64> {
    let t = input.trim();
    let bad = || {
        Error::InvalidInput(format!(
            "invalid --expires-in {:?}: give a number with s, m, h, d or w, e.g. 12h or 7d (at \
             most a year)",
            sanitize(input, 40)
        ))
    };
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(per) {
        Some(secs) if (1..=MAX_GRANT_SECONDS).contains(&secs) => Ok(secs),
        _ => Err(bad()),
    }
}

/// The text `grants create` prints.
pub fn created_text(g: &GrantInfo, label: &str) -> String {
    let limit = match g.max_uses {
        Some(1) => "1 use".to_owned(),
        Some(n) => format!("{n} uses"),
        None => "unlimited uses".to_owned(),
    };
    format!(
        "Granted agent {label} {scope} until {exp} ({limit}).\n\
         grant_id:   {id}\n\
         scope_tag:  {tag} (its tokens carry agentkeys_scope={tag}: access to {tag}/*)\n\
         worst case: {why} ({secs} s)\n\
         The agent uses it with `--grant {id}` (agentkeys token / aws credentials / exec).\n",
        label = sanitize(label, 64),
        scope = sanitize(&g.scope, 200),
        exp = sanitize(&g.expires_at, 64),
        id = sanitize(&g.grant_id, 128),
        tag = sanitize(&g.scope_tag, 250),
        why = sanitize(&g.worst_case_exposure.explanation, 500),
        secs = g.worst_case_exposure.seconds,
    )
}
