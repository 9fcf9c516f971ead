//! Text a client or a provider chose (an OIDC `error_description`, a header) is capped and
//! cleaned before it is stored or logged, so nobody can grow the audit log with it, forge log
//! lines with newlines, or hide text behind bidirectional controls.

/// The most characters of outside text kept in one stored field.
pub const MAX_STORED_CHARS: usize = 200;

/// `text` without control or bidi-formatting characters, cut to [`MAX_STORED_CHARS`] with the
/// cut marked.
pub fn for_storage(text: &str) -> String {
    sanitize(text, MAX_STORED_CHARS)
}

/// `text` without control or bidi-formatting characters, cut to `max_chars` characters; a cut
/// ends in `…[+N chars]`, N counting the characters dropped.
pub fn sanitize(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut kept = 0usize;
    let mut dropped = 0usize;
    for c in text.chars() {
        if is_hidden(c) {
            continue;
        }
        if kept < max_chars {
            out.push(c);
            kept += 1;
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        out.push_str(&format!("…[+{dropped} chars]"));
    }
    out
}

/// Control characters (C0, DEL, C1) and the Unicode formatting marks that reorder or hide text.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' // zero-width spaces and joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{FEFF}' // zero-width no-break space
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_go_and_long_text_is_cut_visibly() {
        assert_eq!(for_storage("access_denied"), "access_denied");
        assert_eq!(
            for_storage("a\nb\r\tc\u{1b}[31md\u{202E}e\u{7f}"),
            "abc[31mde"
        );
        let long = "x".repeat(64 * 1024);
        let stored = for_storage(&long);
        assert!(stored.starts_with(&"x".repeat(MAX_STORED_CHARS)));
        assert!(stored.ends_with(&format!("…[+{} chars]", 64 * 1024 - MAX_STORED_CHARS)));
        assert!(stored.chars().count() < MAX_STORED_CHARS + 20);
        assert_eq!(sanitize("ééé", 2), "éé…[+1 chars]");
        assert_eq!(sanitize("", 5), "");
    }
}
