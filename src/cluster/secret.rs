//! The shared cluster secret (Erlang's cookie, in RabbitMQ's terms) and the handshake that
//! proves both ends hold it without sending it: each side sends a fresh nonce, each answers
//! with an HMAC-SHA256 over both nonces, both node ids and its direction. A node that
//! cannot answer is dropped before any RPC is read from it.
//!
//! ```text
//! hello:  "WMQCLST1" [node id u64] [name len u8][name] [nonce 32]     (both directions)
//! proof:  [HMAC 32]                                                   (server first)
//! ```

use ring::hmac;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: [u8; 8] = *b"WMQCLST1";
/// A shorter secret is refused: it could be guessed.
pub const MIN_SECRET_LEN: usize = 16;
/// The whole handshake must finish within this (a peer that stalls is dropped).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "clustered nodes need the shared cluster secret: set WARRENMQ_CLUSTER_SECRET or \
         cluster_secret_file (or write it to {default})"
    )]
    Missing { default: PathBuf },
    #[error("the cluster secret must be at least {MIN_SECRET_LEN} bytes")]
    TooShort,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("i/o during the cluster handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a cluster peer (bad magic)")]
    Magic,
    #[error("the peer does not hold the cluster secret")]
    BadProof,
    #[error("the cluster handshake timed out")]
    Timeout,
}

/// The secret every member holds.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn new(bytes: &[u8]) -> Result<Secret, SecretError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort);
        }
        Ok(Secret(hmac::Key::new(hmac::HMAC_SHA256, trimmed)))
    }

    /// From `WARRENMQ_CLUSTER_SECRET`, else the file given, else `<data dir>/cluster.secret`.
    pub fn load(file: Option<&Path>, data_dir: &Path) -> Result<Secret, SecretError> {
        if let Some(v) = std::env::var_os("WARRENMQ_CLUSTER_SECRET") {
            return Secret::new(v.as_encoded_bytes());
        }
        let default = data_dir.join("cluster.secret");
        let path = file.map(Path::to_path_buf).unwrap_or(default.clone());
        match std::fs::read(&path) {
            Ok(bytes) => Secret::new(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => {
                Err(SecretError::Missing { default })
            }
            Err(source) => Err(SecretError::Read { path, source }),
        }
    }

    fn proof(&self, direction: &[u8], a: &Hello, b: &Hello) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(direction);
        for h in [a, b] {
            ctx.update(&h.node.to_be_bytes());
            ctx.update(&h.nonce);
        }
        ctx.sign()
    }

    fn verify(&self, direction: &[u8], a: &Hello, b: &Hello, tag: &[u8]) -> bool {
        let mut msg = direction.to_vec();
        for h in [a, b] {
            msg.extend_from_slice(&h.node.to_be_bytes());
            msg.extend_from_slice(&h.nonce);
        }
        hmac::verify(&self.0, &msg, tag).is_ok()
    }
}

/// Who a peer says it is (believed only after its proof checks).
#[derive(Debug, Clone)]
pub struct Hello {
    pub node: u64,
    pub name: String,
    nonce: [u8; 32],
}

impl Hello {
    fn new(node: u64, name: &str) -> Hello {
        let mut name = name.to_string();
        while name.len() > 255 {
            name.pop();
        }
        Hello {
            node,
            name,
            nonce: rand::random(),
        }
    }

    async fn send<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&self.node.to_be_bytes());
        b.push(self.name.len() as u8);
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&self.nonce);
        w.write_all(&b).await?;
        w.flush().await
    }

    async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Hello, HandshakeError> {
        let mut head = [0u8; 17];
        r.read_exact(&mut head).await?;
        if head[..8] != MAGIC {
            return Err(HandshakeError::Magic);
        }
        let node = u64::from_be_bytes(head[8..16].try_into().unwrap_or_default());
        let mut name = vec![0u8; head[16] as usize];
        r.read_exact(&mut name).await?;
        let mut nonce = [0u8; 32];
        r.read_exact(&mut nonce).await?;
        Ok(Hello {
            node,
            name: String::from_utf8_lossy(&name).into_owned(),
            nonce,
        })
    }
}

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, f)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

/// The connecting side: returns the peer's hello once it proved the secret.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &Secret,
    node: u64,
    name: &str,
) -> Result<Hello, HandshakeError> {
    bounded(async {
        let me = Hello::new(node, name);
        me.send(s).await?;
        let peer = Hello::read(s).await?;
        let mut tag = [0u8; 32];
        s.read_exact(&mut tag).await?;
        if !secret.verify(b"server", &me, &peer, &tag) {
            return Err(HandshakeError::BadProof);
        }
        s.write_all(secret.proof(b"client", &me, &peer).as_ref())
            .await?;
        s.flush().await?;
        Ok(peer)
    })
    .await
}

/// The accepting side: returns the peer's hello once it proved the secret.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &Secret,
    node: u64,
    name: &str,
) -> Result<Hello, HandshakeError> {
    bounded(async {
        let peer = Hello::read(s).await?;
        let me = Hello::new(node, name);
        me.send(s).await?;
        s.write_all(secret.proof(b"server", &peer, &me).as_ref())
            .await?;
        s.flush().await?;
        let mut tag = [0u8; 32];
        s.read_exact(&mut tag).await?;
        if !secret.verify(b"client", &peer, &me, &tag) {
            return Err(HandshakeError::BadProof);
        }
        Ok(peer)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_sides_with_the_secret_agree_and_a_wrong_secret_is_refused_both_ways() {
        let good = Secret::new(b"0123456789abcdef-shared").unwrap();
        let bad = Secret::new(b"fedcba9876543210-other").unwrap();
        for (client_secret, server_secret, ok) in [
            (&good, &good, true),
            (&bad, &good, false),
            (&good, &bad, false),
        ] {
            let (mut a, mut b) = tokio::io::duplex(1024);
            // Each side owns its end, so a side that refuses closes it and the other sees EOF.
            let (cs, ss) = (client_secret.clone(), server_secret.clone());
            let c = tokio::spawn(async move { connect(&mut a, &cs, 7, "a").await });
            let s = tokio::spawn(async move { accept(&mut b, &ss, 9, "b").await });
            let (c, s) = (c.await.unwrap(), s.await.unwrap());
            if ok {
                assert_eq!(c.unwrap().node, 9);
                assert_eq!(s.unwrap().name, "a");
            } else {
                // The side that checks a proof first refuses; the other is dropped.
                assert!(c.is_err() || s.is_err());
                assert!(s.is_err(), "the server never accepts a wrong secret");
            }
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(Secret::new(b"short"), Err(SecretError::TooShort)));
    }
}
