//! `agentkeys whoami` and `agentkeys logout`: the signed-in session itself.

use std::io::Write;

use crate::cache::CredentialCache;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::output::{AGENT_SIGNED_OUT_NOTE, LINKS_STAY_NOTE, emit, to_json};
use agentkeys_types::api::{ActorKind, WhoAmI};

pub(crate) async fn whoami(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<()> {
    let (profile, saved, client) = ctx.session()?;
    let me: WhoAmI = client.whoami(&saved.session_token).await?;
    if json {
        emit(out, &to_json(&me)?)
    } else {
        let kind = serde_json::to_value(me.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        // The label is the client's note from pairing; the broker's whoami does not carry it.
        let label = match (&me.kind, &saved.label) {
            (ActorKind::Agent, Some(l)) if me.omni_account == saved.omni_account => {
                format!("label:        {l}\n")
            }
            _ => String::new(),
        };
        emit(
            out,
            &format!(
                "wallet:       {}\nomni_account: {}\nkind:         {}\n{label}expires_at:   {}\nbroker:       {}\nprofile:      {}\n",
                me.wallet.as_deref().unwrap_or("(none)"),
                me.omni_account,
                kind,
                me.expires_at,
                client.base_url(),
                profile.name()
            ),
        )
    }
}

pub(crate) async fn logout(ctx: &Context, local: bool, out: &mut dyn Write) -> Result<()> {
    let profile = ctx.profile()?;
    // Cached AWS credentials belong to the session: they go with it, whatever happens below.
    CredentialCache::new(profile.dir()).clear()?;
    let Some(saved) = profile.load_session()? else {
        return emit(
            out,
            &format!(
                "Not signed in (profile {}); nothing to do.\n",
                profile.name()
            ),
        );
    };
    if local {
        profile.delete_session()?;
        return emit(
            out,
            &format!(
                "Deleted the saved session of profile {}; the broker was not told, so it stays valid until {}.\n",
                profile.name(),
                saved.expires_at
            ),
        );
    }
    let client = ctx.broker_for_session(&saved)?;
    let message = match client.logout(&saved.session_token).await {
        Ok(()) => format!(
            "Signed out of {} (profile {}).\n",
            client.base_url(),
            profile.name()
        ),
        Err(Error::SessionRejected { .. }) => format!(
            "The session of profile {} had already ended at the broker; deleted it locally.\n",
            profile.name()
        ),
        // Keep the session so the user can retry (or use --local).
        Err(e) => return Err(e),
    };
    profile.delete_session()?;
    let message = if saved.is_agent() {
        message + AGENT_SIGNED_OUT_NOTE
    } else {
        message
    };
    emit(out, &message)
}

/// `agentkeys logout --all`.
pub(crate) async fn logout_all(ctx: &Context, out: &mut dyn Write) -> Result<()> {
    let profile = ctx.profile()?;
    CredentialCache::new(profile.dir()).clear()?;
    let Some(saved) = profile.load_session()? else {
        return emit(
            out,
            &format!(
                "Not signed in (profile {}); nothing to do.\n",
                profile.name()
            ),
        );
    };
    let client = ctx.broker_for_session(&saved)?;
    let mut message = match client.logout_all(&saved.session_token).await {
        Ok(()) => format!(
            "Ended every session of {} at {} and deleted profile {}'s.\n",
            saved.omni_account,
            client.base_url(),
            profile.name()
        ),
        Err(Error::SessionRejected { .. }) => format!(
            "The session of profile {} had already ended at the broker, so it cannot end the \
             others; deleted it locally. Sign in again and retry to end the rest.\n",
            profile.name()
        ),
        Err(e) => return Err(e),
    };
    profile.delete_session()?;
    if saved.is_agent() {
        message.push_str(AGENT_SIGNED_OUT_NOTE);
    } else {
        message.push_str(LINKS_STAY_NOTE);
    }
    emit(out, &message)
}
