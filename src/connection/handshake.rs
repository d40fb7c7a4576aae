//! Opening a connection: protocol header → start/start-ok (authentication) → tune/tune-ok →
//! open/open-ok, all within the handshake timeout.

use super::Connection;
use crate::auth::AuthError;
use crate::error::{AmqpError, ReplyCode};
use crate::protocol::codec::{read_frame, InFrame};
use crate::protocol::{AMQPClass, AMQPValue, FieldTable, LongString, PROTOCOL_HEADER};
use amq_protocol::protocol::connection as conn;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// The capabilities advertised in connection.start, as RabbitMQ does.
const SERVER_CAPABILITIES: &[&str] = &[
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

fn longstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

pub fn server_properties(cluster_name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for c in SERVER_CAPABILITIES {
        caps.insert((*c).into(), AMQPValue::Boolean(true));
    }
    let mut t = FieldTable::default();
    t.insert("product".into(), longstr("WarrenMQ"));
    t.insert("version".into(), longstr(env!("CARGO_PKG_VERSION")));
    t.insert("platform".into(), longstr("Rust"));
    t.insert("cluster_name".into(), longstr(cluster_name));
    t.insert("copyright".into(), longstr("WarrenMQ contributors"));
    t.insert(
        "information".into(),
        longstr("Licensed under the Apache License 2.0"),
    );
    t.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    t
}

fn client_cap(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => {
            matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

impl<R: AsyncRead + Unpin> Connection<R> {
    /// Read one frame before `deadline`. Ok(None) on EOF, timeout or shutdown.
    async fn frame_before(
        &mut self,
        deadline: Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<InFrame>, AmqpError> {
        loop {
            match read_frame(&mut self.buf, self.limits) {
                Ok(Some(InFrame::Heartbeat)) => continue,
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(fe) => return Err(fe.error),
            }
            tokio::select! {
                r = tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.buf)) => match r {
                    Ok(Ok(n)) if n > 0 => self.shared.received(n),
                    Ok(_) => return Ok(None),
                    Err(_) => {
                        tracing::info!(peer = %self.shared.peer, "handshake timed out");
                        return Ok(None);
                    }
                },
                _ = shutdown.changed() => return Ok(None),
            }
        }
    }

    /// RabbitMQ's `max-connections` limits of the user and of the vhost, counted over the
    /// open connections (only when a limit is set).
    fn check_connection_limits(&self, v: &crate::broker::vhost::VHost) -> Result<(), AmqpError> {
        use crate::broker::vhosts::limit_of;
        let user_max = self
            .broker
            .auth
            .user(&self.user)
            .and_then(|u| limit_of(&u.limits, "max-connections"));
        let vhost_max = v.limit("max-connections");
        if user_max.is_none() && vhost_max.is_none() {
            return Ok(());
        }
        let (mut of_user, mut in_vhost) = (0u64, 0u64);
        for c in self.broker.connections.iter() {
            let info = c.info.read();
            if info.open {
                of_user += u64::from(info.user == self.user);
                in_vhost += u64::from(info.vhost == v.name);
            }
        }
        if let Some(max) = user_max.filter(|m| of_user >= *m) {
            return Err(AmqpError::not_allowed(format!(
                "Connection refused for user '{}'. User connection limit ({max}) is reached",
                self.user
            ))
            .at(10, 40));
        }
        if let Some(max) = vhost_max.filter(|m| in_vhost >= *m) {
            return Err(AmqpError::not_allowed(format!(
                "access to vhost '{}' refused for user '{}': connection limit ({max}) is reached",
                v.name, self.user
            ))
            .at(10, 40));
        }
        Ok(())
    }

    /// The next frame must be a connection-class method.
    async fn expect_method(
        &mut self,
        deadline: Instant,
        shutdown: &mut watch::Receiver<bool>,
        what: &str,
    ) -> Result<Option<conn::AMQPMethod>, AmqpError> {
        match self.frame_before(deadline, shutdown).await? {
            None => Ok(None),
            Some(InFrame::Method {
                channel: 0, method, ..
            }) => match *method {
                AMQPClass::Connection(m) => Ok(Some(m)),
                _ => Err(AmqpError::command_invalid(format!("expected {what}"))),
            },
            Some(_) => Err(AmqpError::command_invalid(format!("expected {what}"))),
        }
    }

    /// RABBIT-CR-DEMO's second step: connection.secure asks for the password, secure-ok
    /// carries it. Ok(None) when the client went away.
    async fn cr_demo_password(
        &mut self,
        deadline: Instant,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Result<String, AuthError>>, AmqpError> {
        self.shared.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Secure(conn::Secure {
                challenge: crate::auth::sasl::CR_DEMO_CHALLENGE.into(),
            })),
        );
        let Some(m) = self
            .expect_method(deadline, shutdown, "connection.secure-ok")
            .await?
        else {
            return Ok(None);
        };
        let conn::AMQPMethod::SecureOk(ok) = m else {
            return Err(AmqpError::command_invalid("expected connection.secure-ok").at(10, 21));
        };
        Ok(Some(crate::auth::sasl::cr_demo_password(
            ok.response.as_bytes(),
        )))
    }

    /// Run the handshake. Ok(true) when the connection is open; Ok(false) when it should
    /// just be dropped; Err to close with an error.
    pub(super) async fn handshake(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, AmqpError> {
        let deadline = Instant::now() + self.broker.config.handshake_timeout();
        while self.buf.len() < 8 {
            match tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => self.shared.received(n),
                _ => return Ok(false),
            }
        }
        if &self.buf[..8] != PROTOCOL_HEADER {
            tracing::info!(peer = %self.shared.peer, "bad protocol header; answering with AMQP 0-9-1");
            self.shared
                .out
                .write(|b| b.extend_from_slice(PROTOCOL_HEADER));
            return Ok(false);
        }
        let _ = self.buf.split_to(8);
        self.shared.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Start(conn::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(&self.broker.cluster_name()),
                mechanisms: self.broker.config.auth_mechanisms.join(" ").into(),
                locales: "en_US".into(),
            })),
        );

        let Some(m) = self
            .expect_method(deadline, shutdown, "connection.start-ok")
            .await?
        else {
            return Ok(false);
        };
        let conn::AMQPMethod::StartOk(start_ok) = m else {
            return Err(AmqpError::command_invalid("expected connection.start-ok").at(10, 11));
        };
        let caps = &self.shared.caps;
        let props = &start_ok.client_properties;
        caps.consumer_cancel_notify.store(
            client_cap(props, "consumer_cancel_notify"),
            Ordering::Relaxed,
        );
        caps.connection_blocked
            .store(client_cap(props, "connection.blocked"), Ordering::Relaxed);
        let failure_close = client_cap(props, "authentication_failure_close");
        caps.authentication_failure_close
            .store(failure_close, Ordering::Relaxed);

        let mechanism = start_ok.mechanism.as_str();
        let offered = self
            .broker
            .config
            .auth_mechanisms
            .iter()
            .any(|m| m == mechanism);
        let auth = if !offered {
            Err(AuthError::UnknownMechanism(mechanism.to_string()))
        } else if mechanism == "RABBIT-CR-DEMO" {
            let user = String::from_utf8_lossy(start_ok.response.as_bytes()).into_owned();
            match self.cr_demo_password(deadline, shutdown).await? {
                Some(pass) => {
                    pass.and_then(|p| self.broker.auth.login(&user, &p, self.shared.peer.ip()))
                }
                None => return Ok(false),
            }
        } else {
            self.broker.auth.authenticate(
                mechanism,
                start_ok.response.as_bytes(),
                self.shared.peer.ip(),
            )
        };
        match auth {
            Ok(user) => self.user = user,
            Err(AuthError::UnknownMechanism(m)) => {
                // As RabbitMQ: a protocol error, not a refused login.
                return Err(AmqpError::command_invalid(format!(
                    "unknown authentication mechanism '{m}'"
                ))
                .at(10, 11));
            }
            Err(e) => {
                // The reason goes to the log only (never the password); the client learns
                // no more than RabbitMQ tells it.
                let why = match e {
                    AuthError::Malformed(why) => format!("malformed response: {why}"),
                    AuthError::Refused(why) => why,
                    AuthError::UnknownMechanism(m) => format!("unknown mechanism '{m}'"),
                };
                let mechanism = start_ok.mechanism.as_str();
                tracing::warn!(peer = %self.shared.peer, mechanism, "login refused: {why}");
                // A pause before answering makes password guessing slow.
                let delay = Duration::from_millis(self.broker.config.auth_failure_delay);
                tokio::time::sleep(delay).await;
                if failure_close {
                    return Err(AmqpError::access_refused(format!(
                        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                    ))
                    .at(10, 11));
                }
                return Ok(false);
            }
        }

        let broker = self.broker.clone();
        let cfg = &broker.config;
        self.shared.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Tune(conn::Tune {
                channel_max: cfg.channel_max,
                frame_max: cfg.frame_max,
                heartbeat: cfg.heartbeat,
            })),
        );
        let Some(m) = self
            .expect_method(deadline, shutdown, "connection.tune-ok")
            .await?
        else {
            return Ok(false);
        };
        let conn::AMQPMethod::TuneOk(tune) = m else {
            return Err(AmqpError::command_invalid("expected connection.tune-ok").at(10, 31));
        };
        let negotiate = |server: u32, client: u32| match (server, client) {
            (0, c) => c,
            (s, 0) => s,
            (s, c) => s.min(c),
        };
        if cfg.channel_max != 0 && tune.channel_max > cfg.channel_max {
            return Err(AmqpError::not_allowed(format!(
                "channel_max={} > {} max size",
                tune.channel_max, cfg.channel_max
            ))
            .at(10, 31));
        }
        if cfg.frame_max != 0 && tune.frame_max > cfg.frame_max {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={} > {} max size",
                tune.frame_max, cfg.frame_max
            ))
            .at(10, 31));
        }
        if tune.frame_max != 0 && tune.frame_max < crate::protocol::FRAME_MIN_SIZE {
            return Err(AmqpError::not_allowed(format!(
                "frame_max={} < {} min size",
                tune.frame_max,
                crate::protocol::FRAME_MIN_SIZE
            ))
            .at(10, 31));
        }
        self.channel_max = negotiate(cfg.channel_max as u32, tune.channel_max as u32) as u16;
        let frame_max = negotiate(cfg.frame_max, tune.frame_max);
        self.limits.frame_max = frame_max;
        self.shared.set_frame_max(frame_max);
        self.heartbeat = Duration::from_secs(tune.heartbeat as u64);
        self.shared
            .heartbeat_ms
            .store(tune.heartbeat as u64 * 1000, Ordering::Relaxed);

        let Some(m) = self
            .expect_method(deadline, shutdown, "connection.open")
            .await?
        else {
            return Ok(false);
        };
        let conn::AMQPMethod::Open(open) = m else {
            return Err(AmqpError::command_invalid("expected connection.open").at(10, 40));
        };
        let name = open.virtual_host.as_str();
        match self.broker.vhost(name) {
            Some(_) if !self.broker.auth.can_access_vhost(&self.user, name) => {
                return Err(AmqpError::new(
                    ReplyCode::NotAllowed,
                    format!("access to vhost '{name}' refused for user '{}'", self.user),
                )
                .at(10, 40))
            }
            Some(v) => {
                self.check_connection_limits(&v)?;
                self.vhost = Some(v)
            }
            None => {
                return Err(AmqpError::new(
                    ReplyCode::NotAllowed,
                    format!("vhost {name} not found"),
                )
                .at(10, 40))
            }
        }
        self.access = crate::auth::Access::new(self.broker.auth.clone(), &self.user, name);
        {
            let mut info = self.shared.info.write();
            info.user = self.user.clone();
            info.vhost = name.to_string();
            info.auth_mechanism = start_ok.mechanism.as_str().to_string();
            info.client_properties = start_ok.client_properties.clone();
            info.channel_max = self.channel_max;
            info.open = true;
        }
        self.shared.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::OpenOk(conn::OpenOk {})),
        );
        tracing::debug!(peer = %self.shared.peer, user = %self.user, vhost = name, "connection open");
        Ok(true)
    }
}
