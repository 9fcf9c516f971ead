//! Outgoing mail: the sign-in link. SMTP through lettre in production; in `--dev` with
//! `BROKER_EMAIL_DEV_LOG_LINKS` the link is written to the log instead (never in production:
//! the link is a credential).

use async_trait::async_trait;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("the SMTP server refused or could not be reached: {0}")]
    Send(String),
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends the sign-in (or link) email with `link` to `to`.
    async fn send_sign_in_link(&self, to: &str, link: &str, linking: bool)
    -> Result<(), MailError>;
}

/// How to reach the SMTP server.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// `starttls`, `tls` or `none` (none only to a local relay).
    pub tls: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    pub fn new(s: &SmtpSettings) -> Result<Self, MailError> {
        let builder = match s.tls.as_str() {
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host),
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host),
            _ => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                &s.host,
            )),
        }
        .map_err(|e| MailError::Build(e.to_string()))?;
        let mut builder = builder.port(s.port);
        if let (Some(user), Some(pass)) = (&s.username, &s.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        let from = s
            .from
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Build(e.to_string()))?;
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send_sign_in_link(
        &self,
        to: &str,
        link: &str,
        linking: bool,
    ) -> Result<(), MailError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Build(e.to_string()))?;
        let (subject, action) = if linking {
            (
                "Link this address to your AgentKeys account",
                "link this address to your AgentKeys account",
            )
        } else {
            ("Sign in to AgentKeys", "sign in to AgentKeys")
        };
        let body = format!(
            "Open this link within 10 minutes to {action}:\n\n{link}\n\n\
             If you did not ask for this, ignore this message; nothing happens unless the link is opened.\n"
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError::Build(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map_err(|e| MailError::Send(e.to_string()))?;
        Ok(())
    }
}

/// `--dev` only: writes the link to the log.
pub struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send_sign_in_link(
        &self,
        to: &str,
        link: &str,
        _linking: bool,
    ) -> Result<(), MailError> {
        tracing::warn!(
            to,
            link,
            "email.dev_link (development mode: this link is a credential)"
        );
        Ok(())
    }
}
