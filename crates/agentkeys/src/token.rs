//! `agentkeys token`: mint a short-lived OIDC JWT for the signed-in session.

use std::io::Write;

use crate::context::Context;
use crate::error::Result;
use crate::output::{emit, to_json};
use agentkeys_types::api::MintRequest;

pub(crate) async fn token(
    ctx: &Context,
    req: MintRequest,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let profile = ctx.profile()?;
    let saved = profile.require_session()?;
    let client = ctx.broker_for_session(&saved)?;
    let minted = client.mint(&saved.session_token, &req).await?;
    if json {
        emit(out, &to_json(&minted)?)
    } else {
        emit(out, &format!("{}\n", minted.jwt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Context;
    use std::path::Path;

    fn ctx(dir: &Path, broker: Option<&str>) -> Context {
        Context::for_test(dir, broker)
    }

    #[tokio::test]
    async fn token_without_session_says_log_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = Vec::new();
        let e = token(
            &ctx(dir.path(), None),
            MintRequest::default(),
            false,
            &mut out,
        )
        .await
        .expect_err("no session");
        assert!(
            e.to_string().contains("agentkeys login wallet --key-file"),
            "{e}"
        );
        assert!(out.is_empty());
    }
}
