//! SASL PLAIN and AMQPLAIN responses: where the user name and password are in them; and
//! RabbitMQ's RABBIT-CR-DEMO, whose password comes in a second step (connection.secure).

/// RABBIT-CR-DEMO: the challenge the broker sends, and the prefix of the answer.
pub const CR_DEMO_CHALLENGE: &str = "Please tell me your password";
pub const CR_DEMO_ANSWER: &str = "My password is ";

/// The password in a RABBIT-CR-DEMO secure-ok response.
pub fn cr_demo_password(response: &[u8]) -> Result<String, AuthError> {
    response
        .strip_prefix(CR_DEMO_ANSWER.as_bytes())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .ok_or(AuthError::Malformed(
            "RABBIT-CR-DEMO answer does not start with 'My password is '",
        ))
}

use crate::protocol::{AMQPValue, FieldTable};

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Malformed(&'static str),
    UnknownMechanism(String),
    Refused(String),
}

/// Split a SASL response for `mechanism` into (user, password).
pub fn credentials(mechanism: &str, response: &[u8]) -> Result<(String, String), AuthError> {
    match mechanism {
        "PLAIN" => parse_plain(response),
        "AMQPLAIN" => parse_amqplain(response),
        other => Err(AuthError::UnknownMechanism(other.to_string())),
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

    #[test]
    fn plain() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0guest"),
            Ok(("guest".into(), "guest".into()))
        );
        assert!(matches!(
            credentials("PLAIN", b"garbage"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            credentials("EXTERNAL", b""),
            Err(AuthError::UnknownMechanism(_))
        ));
    }

    #[test]
    fn amqplain() {
        let resp = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest";
        assert_eq!(
            credentials("AMQPLAIN", resp),
            Ok(("guest".into(), "guest".into()))
        );
    }
}
