//! Outgoing mail: the sign-in code (and browser link). SMTP through lettre in production; in
//! `--dev` with `BROKER_EMAIL_DEV_LOG_LINKS` they are written to the log instead (never in
//! production: both are credentials).

use async_trait::async_trait;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use crate::config::SmtpTls;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("the SMTP server refused or could not be reached: {0}")]
    Send(String),
}

/// One sign-in (or link) email.
pub struct SignInMail<'a> {
    pub to: &'a str,
    /// The one-time code, as shown (`ABCD-EFGH`).
    pub code: &'a str,
    /// Sign-in only: the link that signs in the browser which opens it, after a click.
    pub browser_link: Option<&'a str>,
    /// Linking only: the wallet of the master that asked to link this address.
    pub linking_to: Option<&'a str>,
}

impl SignInMail<'_> {
    pub fn subject(&self) -> String {
        match self.linking_to {
            Some(wallet) => format!("Link this address to the AgentKeys account {wallet}?"),
            None => "Your AgentKeys sign-in code".to_owned(),
        }
    }

    /// The text: says who asked, where the code goes and where it must never go.
    pub fn body(&self) -> String {
        let code = self.code;
        match self.linking_to {
            Some(wallet) => format!(
                "The AgentKeys account of wallet {wallet} asked to link this email address to \
                 itself. Once linked, signing in with this address signs in as that account.\n\n\
                 Link code: {code}\n\n\
                 Only the owner of that account types this code, into the `agentkeys identities \
                 link-email` command that is waiting for it. If that is not you, ignore this \
                 message and give the code to no one: nothing is linked without it.\n\n\
                 The code works once and expires in 10 minutes.\n"
            ),
            None => {
                let browser = self.browser_link.map_or_else(String::new, |link| {
                    format!(
                        "To sign in a web browser instead, open this link there and confirm on \
                         the page:\n{link}\n\n"
                    )
                });
                format!(
                    "Your AgentKeys sign-in code: {code}\n\n\
                     Type it into the `agentkeys login email` command that is waiting for it. Never \
                     give it to anyone and never type it into a web page: whoever has it can sign \
                     in as you.\n\n{browser}\
                     The code and the link work once and expire in 10 minutes. If you did not ask \
                     to sign in, ignore this message: nothing happens without the code.\n"
                )
            }
        }
    }
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send_sign_in(&self, mail: &SignInMail<'_>) -> Result<(), MailError>;
}

/// How to reach the SMTP server.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub from: String,
}

pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    pub fn new(s: &SmtpSettings) -> Result<Self, MailError> {
        let builder = match s.tls {
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host),
            SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                &s.host,
            )),
        }
        .map_err(|e| MailError::Build(e.to_string()))?;
        let mut builder = builder.port(s.port);
        if let (Some(user), Some(pass)) = (&s.username, &s.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                pass.expose_secret().to_owned(),
            ));
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
    async fn send_sign_in(&self, mail: &SignInMail<'_>) -> Result<(), MailError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Build(e.to_string()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject())
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body())
            .map_err(|e| MailError::Build(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map_err(|e| MailError::Send(e.to_string()))?;
        Ok(())
    }
}

/// `--dev` only: writes the code and the link to the log.
pub struct LogMailer;

#[async_trait]
impl Mailer for LogMailer {
    async fn send_sign_in(&self, mail: &SignInMail<'_>) -> Result<(), MailError> {
        tracing::warn!(
            to = mail.to,
            code = mail.code,
            link = mail.browser_link,
            linking_to = mail.linking_to,
            note = "development mode: the code and link are credentials",
            "email.dev_code"
        );
        Ok(())
    }
}
