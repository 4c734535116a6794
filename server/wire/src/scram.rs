//! SCRAM-SHA-256 (RFC 5802, 7677) as PostgreSQL's server speaks it, with
//! `tls-server-end-point` channel binding for SCRAM-SHA-256-PLUS. A verifier
//! is what pg_authid stores: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

/// The iterations PostgreSQL uses by default.
pub(crate) const ITERATIONS: u32 = 4096;

/// A stored SCRAM-SHA-256 secret: enough to check a client's proof, not to
/// log in elsewhere with.
#[derive(Clone)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(***)")
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    tag.as_ref().try_into().expect("32 bytes")
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}

/// Random bytes from the system's generator.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random generator works");
    bytes
}

impl Verifier {
    /// Parses a verifier as pg_authid stores it.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|&n| n > 0)?;
        Some(Self {
            iterations,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// The verifier of `password` with `salt` (PostgreSQL's SASLprep is not
    /// applied: passwords are taken as the bytes they are).
    pub fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).expect("iterations > 0"),
            salt,
            password,
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// A verifier no password matches, for a user that does not exist (the
    /// exchange then runs as for one that does, and fails at the proof).
    pub(crate) fn impossible(user: &str) -> Self {
        let salt = sha256(user.as_bytes());
        Self {
            iterations: ITERATIONS,
            salt: salt[..16].to_vec(),
            stored_key: random(),
            server_key: random(),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The client's messages are not SCRAM as agreed (08P01).
    Protocol(&'static str),
    /// The proof is wrong (28P01).
    WrongPassword,
}

/// The server's side of one exchange, between its first and final message.
pub(crate) struct Exchange {
    verifier: Verifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// What the client's `c=` must be, base64-decoded.
    channel: Vec<u8>,
}

/// The channel binding the exchange runs with: the mechanism the client chose
/// and, for -PLUS, the hash of the server's certificate.
pub(crate) struct Binding<'a> {
    pub plus: bool,
    pub end_point: Option<&'a [u8]>,
}

impl Exchange {
    /// Reads the client-first message; returns the exchange and the server-first
    /// message to send.
    pub(crate) fn start(
        verifier: Verifier,
        client_first: &[u8],
        binding: &Binding<'_>,
    ) -> Result<(Self, String), Failure> {
        let text = std::str::from_utf8(client_first).map_err(|_| Failure::Protocol("not UTF-8"))?;
        let (cbind_flag, rest) = text
            .split_once(',')
            .ok_or(Failure::Protocol("no GS2 header"))?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(Failure::Protocol("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(Failure::Protocol(
                "authorization identities are not supported",
            ));
        }
        let gs2_header = &text[..cbind_flag.len() + authzid.len() + 2];
        let mut channel = gs2_header.as_bytes().to_vec();
        match (cbind_flag, binding.plus) {
            ("p=tls-server-end-point", true) => match binding.end_point {
                Some(hash) => channel.extend_from_slice(hash),
                None => return Err(Failure::Protocol("no channel binding data")),
            },
            ("n" | "y", false) => {}
            (_, true) => {
                return Err(Failure::Protocol(
                    "SCRAM-SHA-256-PLUS needs tls-server-end-point",
                ));
            }
            _ => return Err(Failure::Protocol("channel binding was not negotiated")),
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(Failure::Protocol("no client nonce"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(random::<18>()));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            Self {
                verifier,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                nonce,
                channel,
            },
            server_first,
        ))
    }

    /// Checks the client-final message; returns the server-final message.
    pub(crate) fn finish(self, client_final: &[u8]) -> Result<String, Failure> {
        let text = std::str::from_utf8(client_final).map_err(|_| Failure::Protocol("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(Failure::Protocol("no proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let channel = channel
            .and_then(|c| B64.decode(c).ok())
            .ok_or(Failure::Protocol("no channel binding attribute"))?;
        if channel != self.channel {
            return Err(Failure::Protocol("the channel binding does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(Failure::Protocol("the nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(Failure::Protocol("the proof is not 32 bytes"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (i, byte) in client_key.iter_mut().enumerate() {
            *byte = proof[i] ^ signature[i];
        }
        // Compared in constant time: every byte, whatever the first difference.
        let difference = sha256(&client_key)
            .iter()
            .zip(&self.verifier.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(Failure::WrongPassword);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// The `tls-server-end-point` hash of a DER certificate (SHA-256, what RFC 5929
/// asks for certificates signed with SHA-1 or SHA-256).
pub(crate) fn end_point(cert_der: &[u8]) -> Vec<u8> {
    sha256(cert_der).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs a whole exchange against postgres-protocol's client (what
    /// tokio-postgres uses), with `server` as the stored verifier.
    fn exchange(
        client_password: &[u8],
        server: Verifier,
        binding: ChannelBinding,
        server_binding: &Binding<'_>,
    ) -> Result<(), Failure> {
        let mut client = ScramSha256::new(client_password, binding);
        let (exchange, server_first) = Exchange::start(server, client.message(), server_binding)?;
        client
            .update(server_first.as_bytes())
            .expect("client accepts server-first");
        let server_final = exchange.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| Failure::Protocol("the client rejected the server's signature"))
    }

    #[test]
    fn the_right_password_logs_in_and_the_server_is_verified() {
        let verifier = Verifier::from_password(b"pencil", b"salt-of-16-bytes", ITERATIONS);
        let plain = Binding {
            plus: false,
            end_point: None,
        };
        assert_eq!(
            exchange(
                b"pencil",
                verifier.clone(),
                ChannelBinding::unsupported(),
                &plain
            ),
            Ok(())
        );
        assert_eq!(
            exchange(b"pen", verifier, ChannelBinding::unsupported(), &plain),
            Err(Failure::WrongPassword)
        );
    }

    #[test]
    fn channel_binding_must_match_the_certificate() {
        let verifier = Verifier::from_password(b"pencil", b"salt", ITERATIONS);
        let hash = end_point(b"certificate");
        let plus = Binding {
            plus: true,
            end_point: Some(&hash),
        };
        let bound = ChannelBinding::tls_server_end_point(hash.clone());
        assert_eq!(exchange(b"pencil", verifier.clone(), bound, &plus), Ok(()));
        let other = ChannelBinding::tls_server_end_point(end_point(b"another"));
        assert!(matches!(
            exchange(b"pencil", verifier, other, &plus),
            Err(Failure::Protocol(_))
        ));
    }

    #[test]
    fn a_stored_verifier_parses_as_postgresql_writes_it() {
        let text = postgres_protocol::password::scram_sha_256(b"secret");
        let verifier = Verifier::parse(&text).expect("parses");
        let plain = Binding {
            plus: false,
            end_point: None,
        };
        assert_eq!(
            exchange(b"secret", verifier, ChannelBinding::unsupported(), &plain),
            Ok(())
        );
        assert!(Verifier::parse("md5abc").is_none());
        assert!(Verifier::parse("SCRAM-SHA-256$0:AAAA$AAAA:AAAA").is_none());
        assert!(!format!("{:?}", Verifier::parse(&text).unwrap()).contains("SCRAM"));
    }
}
