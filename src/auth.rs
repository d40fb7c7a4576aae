//! Users and authentication: SASL PLAIN and AMQPLAIN, constant-time password comparison,
//! and the loopback-only rule for guest.

use crate::protocol::{AMQPValue, FieldTable};
use std::net::IpAddr;

pub struct User {
    pub name: String,
    password: String,
    /// May only log in from a loopback address (guest, by default).
    pub loopback_only: bool,
}

pub struct Users {
    users: Vec<User>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Malformed(&'static str),
    UnknownMechanism(String),
    Refused(String),
}

/// Compare without an early exit, so timing does not reveal how much of a password matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

impl Users {
    pub fn with_default_guest(user: &str, password: &str) -> Self {
        Users {
            users: vec![User {
                name: user.to_string(),
                password: password.to_string(),
                loopback_only: user == "guest",
            }],
        }
    }

    /// Check a SASL response for `mechanism`; returns the user name.
    pub fn authenticate(
        &self,
        mechanism: &str,
        response: &[u8],
        peer: IpAddr,
    ) -> Result<String, AuthError> {
        let (user, pass) = match mechanism {
            "PLAIN" => parse_plain(response)?,
            "AMQPLAIN" => parse_amqplain(response)?,
            other => return Err(AuthError::UnknownMechanism(other.to_string())),
        };
        let found = self.users.iter().find(|u| u.name == user);
        let ok = match found {
            Some(u) => constant_time_eq(u.password.as_bytes(), pass.as_bytes()),
            None => {
                constant_time_eq(b"no such user", pass.as_bytes());
                false
            }
        };
        if !ok {
            return Err(AuthError::Refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            )));
        }
        if let Some(u) = found {
            if u.loopback_only && !peer.is_loopback() {
                return Err(AuthError::Refused(format!(
                    "user '{user}' can only connect via localhost"
                )));
            }
        }
        Ok(user)
    }
}

fn parse_plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts
        .next()
        .ok_or(AuthError::Malformed("empty PLAIN response"))?;
    let user = parts
        .next()
        .ok_or(AuthError::Malformed("PLAIN response without user"))?;
    let pass = parts
        .next()
        .ok_or(AuthError::Malformed("PLAIN response without password"))?;
    if parts.next().is_some() {
        return Err(AuthError::Malformed("PLAIN response has extra fields"));
    }
    Ok((
        String::from_utf8_lossy(user).into_owned(),
        String::from_utf8_lossy(pass).into_owned(),
    ))
}

fn parse_amqplain(response: &[u8]) -> Result<(String, String), AuthError> {
    // A field table without its length prefix.
    let mut buf = (response.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(response);
    crate::protocol::table::check_field_table(&buf, 4).map_err(AuthError::Malformed)?;
    let table: FieldTable = amq_protocol::types::parsing::parse_field_table(&buf[..])
        .map(|(_, t)| t)
        .map_err(|_| AuthError::Malformed("malformed AMQPLAIN response"))?;
    let get = |k: &str| match table.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        _ => None,
    };
    let user = get("LOGIN").ok_or(AuthError::Malformed("AMQPLAIN response without LOGIN"))?;
    let pass = get("PASSWORD").ok_or(AuthError::Malformed("AMQPLAIN response without PASSWORD"))?;
    Ok((user, pass))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn plain_and_loopback_rule() {
        let users = Users::with_default_guest("guest", "guest");
        assert_eq!(
            users.authenticate("PLAIN", b"\0guest\0guest", LOCAL),
            Ok("guest".into())
        );
        assert!(users
            .authenticate("PLAIN", b"\0guest\0nope", LOCAL)
            .is_err());
        let remote = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert!(matches!(
            users.authenticate("PLAIN", b"\0guest\0guest", remote),
            Err(AuthError::Refused(_))
        ));
        assert!(matches!(
            users.authenticate("PLAIN", b"garbage", LOCAL),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn amqplain() {
        let users = Users::with_default_guest("guest", "guest");
        let resp = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest";
        assert_eq!(
            users.authenticate("AMQPLAIN", resp, LOCAL),
            Ok("guest".into())
        );
    }
}
