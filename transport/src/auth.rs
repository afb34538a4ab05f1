//! Pool secret and the mutual authentication handshake (sans-IO).
//!
//! Every brick and client of a pool shares one secret of at least 32 random
//! bytes. A connection proves it, both ways, before anything else is served:
//!
//! ```text
//! client                                              server
//!   Hello { client_nonce Nc }                ->
//!                                            <-  Challenge { server_nonce Ns,
//!                                                  server_proof = HMAC(K, "…server" | Nc | Ns) }
//!   (client checks server_proof)
//!   Auth { client_proof = HMAC(K, "…client" | Nc | Ns) } ->
//!                                            <-  AuthOk   (or Error NotAuthenticated, then close)
//! ```
//!
//! Both nonces are fresh per connection, so a recorded transcript does not
//! replay: the server picks a new `Ns` and the old client proof no longer
//! matches. The role label keeps one side's proof from being reflected back
//! as the other's. Proofs are compared in constant time.
//!
//! The state machines here take messages and return the message to send;
//! randomness (the nonces) is an input, so tests are deterministic.

use crate::wire::{
    AuthProof, Challenge, ErrorCode, Hello, Opcode, Request, Response, NONCE_LEN, PROOF_LEN,
};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

const LABEL_SERVER: &[u8] = b"stretto brick auth v1 server";
const LABEL_CLIENT: &[u8] = b"stretto brick auth v1 client";

/// Errors reading or writing a secret file.
#[derive(Debug, Error)]
pub enum SecretError {
    #[error("secret file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("secret file {path} already exists")]
    Exists { path: PathBuf },
    #[error("secret file {path} is not hex text")]
    NotHex { path: PathBuf },
    #[error("secret of {len} bytes is shorter than the minimum of {min}")]
    TooShort { len: usize, min: usize },
}

/// The pool secret. Cheap to clone; never printed.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// Minimum length in bytes.
    pub const MIN_LEN: usize = 32;

    /// A fresh random secret of [`Secret::MIN_LEN`] bytes from the OS.
    pub fn generate() -> Secret {
        let mut b = [0u8; Self::MIN_LEN];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Secret(Arc::from(&b[..]))
    }

    /// A secret from raw bytes (at least [`Secret::MIN_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, SecretError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(SecretError::TooShort {
                len: bytes.len(),
                min: Self::MIN_LEN,
            });
        }
        Ok(Secret(Arc::from(bytes)))
    }

    /// Reads a secret file: the secret as hex text, surrounding whitespace
    /// ignored.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Io {
            path: path.to_owned(),
            source,
        })?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "secret file is readable by group or others");
            }
        }
        let bytes = decode_hex(text.trim()).ok_or_else(|| SecretError::NotHex {
            path: path.to_owned(),
        })?;
        Secret::from_bytes(&bytes)
    }

    /// Generates a secret and writes it to a new file (mode 0600); fails if
    /// the file exists.
    pub fn save_new(path: &Path) -> Result<Secret, SecretError> {
        let secret = Secret::generate();
        secret.write_new(path)?;
        Ok(secret)
    }

    /// Writes this secret to a new file (mode 0600); fails if the file
    /// exists. Used to copy the pool secret into a brick directory.
    pub fn write_new(&self, path: &Path) -> Result<(), SecretError> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Created 0600 from the start: there is no window in which the
            // file exists with wider permissions.
            opts.mode(0o600);
        }
        let io_err = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = opts.open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                SecretError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io_err(e)
            }
        })?;
        let mut text = encode_hex(&self.0);
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok(())
    }

    fn proof(
        &self,
        label: &[u8],
        client_nonce: &[u8; NONCE_LEN],
        server_nonce: &[u8; NONCE_LEN],
    ) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(label);
        mac.update(client_nonce);
        mac.update(server_nonce);
        mac
    }

    fn sign(&self, label: &[u8], cn: &[u8; NONCE_LEN], sn: &[u8; NONCE_LEN]) -> [u8; PROOF_LEN] {
        self.proof(label, cn, sn).finalize().into_bytes().into()
    }

    fn verify(
        &self,
        label: &[u8],
        cn: &[u8; NONCE_LEN],
        sn: &[u8; NONCE_LEN],
        proof: &[u8; PROOF_LEN],
    ) -> bool {
        self.proof(label, cn, sn).verify_slice(proof).is_ok()
    }
}

fn encode_hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// A fresh handshake nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A nonce from the OS random source.
    pub fn random() -> Nonce {
        let mut b = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Nonce(b)
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("the server's proof of the pool secret is wrong (different secret, or not a brick of this pool)")]
    ServerProofInvalid,
    #[error("the client's proof of the pool secret is wrong")]
    ClientProofInvalid,
    #[error("the server refused authentication: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("{opcode:?} before the handshake completed")]
    NotAuthenticated { opcode: Opcode },
    #[error("unexpected {what} during the handshake")]
    Unexpected { what: String },
}

enum ClientState {
    AwaitChallenge,
    AwaitResult,
    Done,
    Failed,
}

/// What the client does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Send this request and feed its reply back.
    Send(Request),
    /// The connection is authenticated both ways.
    Done,
}

/// The client's side of the handshake.
pub struct ClientHandshake {
    secret: Secret,
    client_nonce: [u8; NONCE_LEN],
    server_nonce: [u8; NONCE_LEN],
    state: ClientState,
}

impl ClientHandshake {
    /// Starts a handshake; returns the state machine and the `Hello` to send.
    pub fn new(secret: Secret, client_nonce: Nonce) -> (ClientHandshake, Request) {
        let hs = ClientHandshake {
            secret,
            client_nonce: client_nonce.0,
            server_nonce: [0; NONCE_LEN],
            state: ClientState::AwaitChallenge,
        };
        let hello = Request::Hello(Hello {
            client_nonce: client_nonce.0,
        });
        (hs, hello)
    }

    /// Feeds the reply to the last request sent.
    pub fn on_response(&mut self, resp: &Response) -> Result<ClientStep, AuthError> {
        let result = self.step(resp);
        if result.is_err() {
            self.state = ClientState::Failed;
        }
        result
    }

    fn step(&mut self, resp: &Response) -> Result<ClientStep, AuthError> {
        if let Response::Error(e) = resp {
            return Err(AuthError::Refused {
                code: e.code,
                message: e.message.clone(),
            });
        }
        match (&self.state, resp) {
            (ClientState::AwaitChallenge, Response::Challenge(c)) => {
                if !self.secret.verify(
                    LABEL_SERVER,
                    &self.client_nonce,
                    &c.server_nonce,
                    &c.server_proof,
                ) {
                    return Err(AuthError::ServerProofInvalid);
                }
                self.server_nonce = c.server_nonce;
                self.state = ClientState::AwaitResult;
                let proof = self
                    .secret
                    .sign(LABEL_CLIENT, &self.client_nonce, &self.server_nonce);
                Ok(ClientStep::Send(Request::Auth(AuthProof {
                    client_proof: proof,
                })))
            }
            (ClientState::AwaitResult, Response::AuthOk) => {
                self.state = ClientState::Done;
                Ok(ClientStep::Done)
            }
            (_, other) => Err(AuthError::Unexpected {
                what: format!("{:?} reply", other.opcode()),
            }),
        }
    }

    /// True once the server accepted the client.
    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }
}

enum ServerState {
    AwaitHello,
    AwaitProof { client_nonce: [u8; NONCE_LEN] },
    Authenticated,
    Failed,
}

/// What the server does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    /// Send this reply and wait for the next request.
    Reply(Response),
    /// Send this reply (`AuthOk`); the connection is authenticated.
    Authenticated(Response),
    /// Send this error reply, log the reason and close the connection.
    Refuse(Response, AuthError),
}

/// The server's side of the handshake.
pub struct ServerHandshake {
    secret: Secret,
    server_nonce: [u8; NONCE_LEN],
    state: ServerState,
}

impl ServerHandshake {
    /// A handshake for a new connection; `server_nonce` must be fresh.
    pub fn new(secret: Secret, server_nonce: Nonce) -> ServerHandshake {
        ServerHandshake {
            secret,
            server_nonce: server_nonce.0,
            state: ServerState::AwaitHello,
        }
    }

    /// True once the client proved the secret.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, ServerState::Authenticated)
    }

    /// Feeds a request received before authentication completed.
    pub fn on_request(&mut self, req: &Request) -> ServerStep {
        let step = self.step(req);
        if let ServerStep::Refuse(..) = step {
            self.state = ServerState::Failed;
        }
        step
    }

    fn step(&mut self, req: &Request) -> ServerStep {
        let refuse = |err: AuthError| {
            ServerStep::Refuse(
                Response::error(ErrorCode::NotAuthenticated, err.to_string()),
                err,
            )
        };
        match (&self.state, req) {
            (ServerState::AwaitHello, Request::Hello(h)) => {
                let proof = self
                    .secret
                    .sign(LABEL_SERVER, &h.client_nonce, &self.server_nonce);
                self.state = ServerState::AwaitProof {
                    client_nonce: h.client_nonce,
                };
                ServerStep::Reply(Response::Challenge(Challenge {
                    server_nonce: self.server_nonce,
                    server_proof: proof,
                }))
            }
            (ServerState::AwaitProof { client_nonce }, Request::Auth(a)) => {
                if self.secret.verify(
                    LABEL_CLIENT,
                    client_nonce,
                    &self.server_nonce,
                    &a.client_proof,
                ) {
                    self.state = ServerState::Authenticated;
                    ServerStep::Authenticated(Response::AuthOk)
                } else {
                    refuse(AuthError::ClientProofInvalid)
                }
            }
            (ServerState::Authenticated, other) => refuse(AuthError::Unexpected {
                what: format!(
                    "{:?} handshake request after authentication",
                    other.opcode()
                ),
            }),
            (_, other) => refuse(AuthError::NotAuthenticated {
                opcode: other.opcode(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret::from_bytes(&[b; 32]).unwrap()
    }

    /// Runs a handshake between two state machines; returns the server's
    /// final step and whether the client finished.
    fn run(
        client_secret: Secret,
        server_secret: Secret,
    ) -> (Result<ClientStep, AuthError>, Option<ServerStep>) {
        let (mut c, hello) = ClientHandshake::new(client_secret, Nonce([1; 32]));
        let mut s = ServerHandshake::new(server_secret, Nonce([2; 32]));
        let ServerStep::Reply(ch) = s.on_request(&hello) else {
            panic!("hello refused")
        };
        match c.on_response(&ch) {
            Ok(ClientStep::Send(auth)) => {
                let step = s.on_request(&auth);
                let reply = match &step {
                    ServerStep::Authenticated(r)
                    | ServerStep::Refuse(r, _)
                    | ServerStep::Reply(r) => r.clone(),
                };
                (c.on_response(&reply), Some(step))
            }
            other => (other, None),
        }
    }

    #[test]
    fn right_secret_authenticates_both_ways() {
        let (client, server) = run(secret(7), secret(7));
        assert_eq!(client, Ok(ClientStep::Done));
        assert_eq!(server, Some(ServerStep::Authenticated(Response::AuthOk)));
    }

    #[test]
    fn wrong_secret_is_refused_by_the_client_first() {
        // The server proves first, so a client with another secret notices
        // before it reveals a proof of its own.
        let (client, server) = run(secret(7), secret(8));
        assert_eq!(client, Err(AuthError::ServerProofInvalid));
        assert!(server.is_none());
    }

    #[test]
    fn wrong_client_proof_is_refused_by_the_server() {
        let mut s = ServerHandshake::new(secret(7), Nonce([2; 32]));
        s.on_request(&Request::Hello(Hello {
            client_nonce: [1; 32],
        }));
        let step = s.on_request(&Request::Auth(AuthProof {
            client_proof: [0; 32],
        }));
        let ServerStep::Refuse(Response::Error(e), AuthError::ClientProofInvalid) = step else {
            panic!("not refused: {step:?}")
        };
        assert_eq!(e.code, ErrorCode::NotAuthenticated);
        assert!(!s.is_authenticated());
    }

    #[test]
    fn request_before_auth_is_refused() {
        for req in [
            Request::Ping(crate::wire::Ping { token: 1 }),
            Request::BrickStats,
            Request::Auth(AuthProof {
                client_proof: [0; 32],
            }),
        ] {
            let mut s = ServerHandshake::new(secret(7), Nonce([2; 32]));
            let step = s.on_request(&req);
            assert!(
                matches!(step, ServerStep::Refuse(Response::Error(ref e), AuthError::NotAuthenticated { .. }) if e.code == ErrorCode::NotAuthenticated),
                "{step:?}"
            );
        }
        // Also in the middle of the handshake.
        let mut s = ServerHandshake::new(secret(7), Nonce([2; 32]));
        s.on_request(&Request::Hello(Hello {
            client_nonce: [1; 32],
        }));
        assert!(matches!(
            s.on_request(&Request::BrickStats),
            ServerStep::Refuse(..)
        ));
    }

    #[test]
    fn replayed_transcript_fails_against_a_fresh_server_nonce() {
        let k = secret(9);
        // Record an honest handshake.
        let (mut c, hello) = ClientHandshake::new(k.clone(), Nonce([1; 32]));
        let mut s1 = ServerHandshake::new(k.clone(), Nonce([2; 32]));
        let ServerStep::Reply(ch) = s1.on_request(&hello) else {
            panic!()
        };
        let Ok(ClientStep::Send(auth)) = c.on_response(&ch) else {
            panic!()
        };
        assert!(matches!(s1.on_request(&auth), ServerStep::Authenticated(_)));
        // Replay the client's messages to a new connection.
        let mut s2 = ServerHandshake::new(k, Nonce([3; 32]));
        assert!(matches!(s2.on_request(&hello), ServerStep::Reply(_)));
        assert!(matches!(
            s2.on_request(&auth),
            ServerStep::Refuse(_, AuthError::ClientProofInvalid)
        ));
    }

    #[test]
    fn server_proof_is_not_reflected_as_client_proof() {
        let k = secret(9);
        let mut s = ServerHandshake::new(k, Nonce([2; 32]));
        let ServerStep::Reply(Response::Challenge(ch)) = s.on_request(&Request::Hello(Hello {
            client_nonce: [1; 32],
        })) else {
            panic!()
        };
        let step = s.on_request(&Request::Auth(AuthProof {
            client_proof: ch.server_proof,
        }));
        assert!(matches!(step, ServerStep::Refuse(..)));
    }

    #[test]
    fn secret_file_round_trip_and_no_overwrite() {
        let dir = std::env::temp_dir().join(format!("stretto-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pool.secret");
        let _ = std::fs::remove_file(&path);
        let s = Secret::save_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = Secret::load(&path).unwrap();
        assert_eq!(&*loaded.0, &*s.0);
        assert!(matches!(
            Secret::save_new(&path),
            Err(SecretError::Exists { .. })
        ));
        std::fs::write(&path, "abcd\n").unwrap();
        assert!(matches!(
            Secret::load(&path),
            Err(SecretError::TooShort { .. })
        ));
        std::fs::write(&path, "zz".repeat(40)).unwrap();
        assert!(matches!(
            Secret::load(&path),
            Err(SecretError::NotHex { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
