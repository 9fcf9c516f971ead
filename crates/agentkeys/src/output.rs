//! Output helpers shared by the commands: writing to the command's output, JSON, tables, and
//! the notes and flags suggested in messages. A leaf: imports no command module.

use std::io::Write;
use std::path::Path;

use crate::client::sanitize;
use crate::config::{DEFAULT_PROFILE, Profile};
use crate::error::{Error, Result};

/// Said when an agent signs out: it gets a new session with its device key.
pub(crate) const AGENT_SIGNED_OUT_NOTE: &str = "This agent now has no session; `agentkeys agent \
     login --agent <AGENT_OMNI>` gets a new one with its device key.\n";

/// Said after `logout --all` of a master: ending sessions does not remove the ways in.
pub(crate) const LINKS_STAY_NOTE: &str = "Linked email and OIDC identities stay linked and can \
     sign in again: see `agentkeys identities list`, and `agentkeys identities unlink` to remove \
     one (that also revokes the sessions it gave).\n";

pub(crate) fn emit(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("write to", "stdout", e))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(|e| Error::InvalidInput(format!("cannot encode the output as JSON: {e}")))
}

/// `--profile NAME ` when the profile is not the default one, for commands we suggest.
pub(crate) fn profile_flag(profile: &Profile) -> String {
    if profile.name() == DEFAULT_PROFILE {
        String::new()
    } else {
        format!("--profile {} ", profile.name())
    }
}

/// `--key-file FILE` when the key is not at the profile's default place.
pub(crate) fn key_flag(profile: &Profile, key: &Path) -> String {
    if key == profile.device_key_path() {
        String::new()
    } else {
        format!(" --key-file {}", key.display())
    }
}

/// The JSON name of a serde enum value (`active`, `agent`, …).
pub(crate) fn enum_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Left-aligned columns separated by two spaces; cells are made one safe line each.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let clean: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| sanitize(c, 200)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &clean {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &clean {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_stay_one_line_per_row() {
        let t = table(
            &["A", "LONG-HEADER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q\nr".into(), "2".into()],
            ],
        );
        assert_eq!(t, "A    LONG-HEADER\nxyz  1\nq r  2\n");
    }
}
