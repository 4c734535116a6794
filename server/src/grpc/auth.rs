//! Who may call what: a bearer token (or, with mutual TLS and no tokens, a verified
//! client certificate) maps to a role, and one table says the role each method
//! needs. Health and reflection stay open. The caller's role and token fingerprint
//! (never the token) go on the RPC's span and its log line.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Status;
use tower::{Layer, Service};

/// What a caller may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Every Get*, List*, Watch* and history call.
    Viewer,
    /// Plus RunLoadTest (read-only queries) and OptimizePools without apply.
    Operator,
    /// Everything: create, update, delete, OptimizePools with apply, writing load
    /// tests.
    Admin,
}

impl Role {
    /// The role's name as written in a tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// A role by name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The authenticated caller of an RPC, put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What it may do.
    pub role: Role,
    /// The first 16 hex digits of its token's SHA-256 (none without a token).
    pub fingerprint: Option<String>,
}

impl Caller {
    /// The caller of a request; one that passed no authentication layer may only
    /// read.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller {
                role: Role::Viewer,
                fingerprint: None,
            })
    }

    /// PERMISSION_DENIED naming the role `what` needs, unless the caller has it.
    pub fn require(&self, needed: Role, what: &str) -> Result<(), Status> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{what} needs the {needed} role (this caller is {})",
                self.role
            )))
        }
    }
}

/// The role a method needs: `None` for the open services (health, reflection).
/// Unknown methods of our services need admin (and tonic then answers
/// UNIMPLEMENTED to an admin).
pub fn required_role(path: &str) -> Option<Role> {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    if service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.") {
        return None;
    }
    Some(match (service, method) {
        (
            "poolplane.v1.PoolService",
            "RunLoadTest" | "OptimizePools" | "KillClient" | "ReconnectPool" | "PausePool"
            | "ResumePool",
        ) => Role::Operator,
        // Read-only for an operator (the handler decides), Execute for admins.
        ("poolplane.v1.QueryService", "Query" | "QueryStream" | "Transaction") => Role::Operator,
        ("poolplane.v1.QueryService", "Execute") => Role::Admin,
        ("poolplane.v1.PoolService", "CreatePool" | "UpdatePoolConfig" | "DeletePool") => {
            Role::Admin
        }
        ("poolplane.v1.PoolService", m)
            if m.starts_with("Get") || m.starts_with("List") || m.starts_with("Watch") =>
        {
            Role::Viewer
        }
        _ => Role::Admin,
    })
}

/// The shortest token accepted in clear (a `sha256:` entry has no such limit: its
/// strength is the operator's business).
pub const MIN_TOKEN_LEN: usize = 16;

/// The tokens of a tokens file, kept only as SHA-256 digests.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    entries: Vec<([u8; 32], Role)>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn fingerprint(digest: &[u8; 32]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal in time independent of where the digests differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl TokenSet {
    /// Parses `TOKEN ROLE` lines (`#` starts a comment; a token may be written
    /// `sha256:<64 hex digits>`). Errors name the line, never the token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<([u8; 32], Role)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = match line.find('#') {
                Some(at) if at == 0 || line[..at].ends_with(char::is_whitespace) => &line[..at],
                _ => line,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (token, role) = match fields.as_slice() {
                [] => continue,
                [token, role] => (*token, *role),
                _ => return Err(format!("line {n}: expected `TOKEN ROLE`")),
            };
            let role = Role::parse(role)
                .ok_or_else(|| format!("line {n}: unknown role (use viewer, operator or admin)"))?;
            let digest = match token.strip_prefix("sha256:") {
                Some(hex) => parse_digest(hex)
                    .ok_or_else(|| format!("line {n}: sha256: needs 64 hex digits"))?,
                None if token.len() < MIN_TOKEN_LEN => {
                    return Err(format!(
                        "line {n}: a token must be at least {MIN_TOKEN_LEN} characters"
                    ));
                }
                None => sha256(token.as_bytes()),
            };
            if entries.iter().any(|(d, _)| same_digest(d, &digest)) {
                return Err(format!("line {n}: this token is listed twice"));
            }
            entries.push((digest, role));
        }
        if entries.is_empty() {
            return Err("holds no token".into());
        }
        Ok(Self { entries })
    }

    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The role of `token` and its fingerprint; every entry is compared, in
    /// constant time, whatever matches.
    pub fn authenticate(&self, token: &str) -> (Option<Role>, String) {
        let digest = sha256(token.as_bytes());
        let mut found = None;
        for (entry, role) in &self.entries {
            if same_digest(entry, &digest) {
                found = Some(*role);
            }
        }
        (found, fingerprint(&digest))
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// How callers are authenticated.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Option<(PathBuf, RwLock<Arc<TokenSet>>)>,
    /// With mutual TLS and no tokens file: the role of a verified client
    /// certificate.
    certificate_role: Option<Role>,
}

impl Authenticator {
    /// No authentication: every caller is admin (loopback only, or
    /// `--insecure-no-auth`).
    pub fn open() -> Self {
        Self {
            tokens: None,
            certificate_role: None,
        }
    }

    /// Callers authenticated by their verified client certificate (mutual TLS),
    /// all with `role`.
    pub fn client_certificates(role: Role) -> Self {
        Self {
            tokens: None,
            certificate_role: Some(role),
        }
    }

    /// Bearer tokens from a tokens file.
    pub fn tokens_file(path: &Path) -> Result<Self, String> {
        let set = TokenSet::load(path)?;
        Ok(Self {
            tokens: Some((path.to_owned(), RwLock::new(Arc::new(set)))),
            certificate_role: None,
        })
    }

    /// Whether callers must authenticate.
    pub fn enforced(&self) -> bool {
        self.tokens.is_some() || self.certificate_role.is_some()
    }

    /// Re-reads the tokens file; a file that does not parse keeps the old set and
    /// the error says why. Returns how many tokens are now in force.
    pub fn reload(&self) -> Result<usize, String> {
        let Some((path, set)) = &self.tokens else {
            return Ok(0);
        };
        let fresh = TokenSet::load(path)?;
        let count = fresh.len();
        *set.write().expect("tokens lock") = Arc::new(fresh);
        Ok(count)
    }

    /// The caller of a request, or UNAUTHENTICATED (with the presented token's
    /// fingerprint, for the log).
    fn authenticate<B>(
        &self,
        request: &http::Request<B>,
    ) -> Result<Caller, (Status, Option<String>)> {
        if let Some((_, set)) = &self.tokens {
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let Some(header) = header else {
                return Err((
                    Status::unauthenticated("missing `authorization: Bearer <token>` metadata"),
                    None,
                ));
            };
            let token = header
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .ok_or_else(|| {
                    (
                        Status::unauthenticated(
                            "the authorization metadata is not `Bearer <token>`",
                        ),
                        None,
                    )
                })?;
            let set = Arc::clone(&set.read().expect("tokens lock"));
            let (role, fingerprint) = set.authenticate(token);
            return match role {
                Some(role) => Ok(Caller {
                    role,
                    fingerprint: Some(fingerprint),
                }),
                None => Err((Status::unauthenticated("unknown token"), Some(fingerprint))),
            };
        }
        match self.certificate_role {
            Some(role) => {
                let verified = request
                    .extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|info| info.peer_certs())
                    .is_some_and(|certs| !certs.is_empty());
                if verified {
                    Ok(Caller {
                        role,
                        fingerprint: None,
                    })
                } else {
                    Err((
                        Status::unauthenticated("no verified client certificate"),
                        None,
                    ))
                }
            }
            None => Ok(Caller {
                role: Role::Admin,
                fingerprint: None,
            }),
        }
    }
}

/// The layer that authenticates and authorizes every call.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer over `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The service the layer wraps around each call.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let Some(needed) = required_role(&method) else {
            return Box::pin(self.inner.call(request));
        };
        let span = tracing::Span::current();
        let what = method.trim_start_matches('/').to_owned();
        let refuse = |status: Status, role: Option<Role>, fingerprint: Option<String>| {
            tracing::warn!(
                rpc = %what,
                code = status.code() as i32,
                role = role.map_or("none", Role::name),
                token_fingerprint = fingerprint.as_deref().unwrap_or(""),
                reason = status.message(),
                "rpc refused"
            );
            let response: http::Response<R> = status.into_http();
            Box::pin(std::future::ready(Ok(response))) as Self::Future
        };
        let caller = match self.auth.authenticate(&request) {
            Ok(caller) => caller,
            Err((status, fingerprint)) => {
                if let Some(fp) = &fingerprint {
                    span.record("poolplane.token_fingerprint", fp.as_str());
                }
                return refuse(status, None, fingerprint);
            }
        };
        span.record("enduser.role", caller.role.name());
        if let Some(fp) = &caller.fingerprint {
            span.record("poolplane.token_fingerprint", fp.as_str());
        }
        if let Err(status) = caller.require(needed, &what) {
            return refuse(status, Some(caller.role), caller.fingerprint);
        }
        let role = caller.role;
        let fingerprint = caller.fingerprint.clone();
        request.extensions_mut().insert(caller);
        let future = self.inner.call(request);
        let started = Instant::now();
        Box::pin(async move {
            let response = future.await?;
            let code = super::trace::status_code(&response);
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            let token_fingerprint = fingerprint.as_deref().unwrap_or("");
            // The data plane's calls are too many for a line each at info (as
            // PgBouncer does not log every query); the control plane's are an
            // access log.
            if what.starts_with("poolplane.v1.QueryService/") {
                tracing::debug!(rpc = %what, code, role = role.name(), token_fingerprint, elapsed_ms, "rpc");
            } else {
                tracing::info!(rpc = %what, code, role = role.name(), token_fingerprint, elapsed_ms, "rpc");
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_lines() {
        let hashed = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            "# the operators\nviewer-token-0000001 viewer\n  operator-token-00001   operator # ops\n{hashed} admin\n\n"
        );
        let set = TokenSet::parse(&text).expect("parses");
        assert_eq!(set.len(), 3);
        assert_eq!(
            set.authenticate("viewer-token-0000001").0,
            Some(Role::Viewer)
        );
        assert_eq!(
            set.authenticate("operator-token-00001").0,
            Some(Role::Operator)
        );
        assert_eq!(set.authenticate("nope-nope-nope-nope").0, None);
        let (_, fp) = set.authenticate("viewer-token-0000001");
        assert_eq!(fp.len(), 16);
        assert!(!fp.contains("viewer"));
    }

    #[test]
    fn sha256_entries_match_their_token() {
        let token = "a-long-enough-secret-token";
        let hex: String = sha256(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let set = TokenSet::parse(&format!("sha256:{hex} admin")).expect("parses");
        assert_eq!(set.authenticate(token).0, Some(Role::Admin));
        assert_eq!(set.authenticate(&format!("sha256:{hex}")).0, None);
    }

    #[test]
    fn malformed_files_name_the_line_not_the_token() {
        for (text, expect) in [
            ("short admin", "line 1: a token must be at least 16"),
            ("a-long-enough-token-1 superuser", "line 1: unknown role"),
            ("x\n", "line 1: expected"),
            ("# nothing\n", "holds no token"),
            ("sha256:abc admin", "64 hex"),
            (
                "a-long-enough-token-1 admin\na-long-enough-token-1 viewer",
                "line 2: this token is listed twice",
            ),
        ] {
            let error = TokenSet::parse(text).unwrap_err();
            assert!(error.contains(expect), "{text}: {error}");
            assert!(!error.contains("a-long-enough"), "{error}");
        }
    }

    #[test]
    fn the_method_table() {
        let p = |m: &str| required_role(&format!("/poolplane.v1.PoolService/{m}"));
        assert_eq!(p("ListPools"), Some(Role::Viewer));
        assert_eq!(p("WatchPoolStats"), Some(Role::Viewer));
        assert_eq!(p("GetMetricsHistory"), Some(Role::Viewer));
        assert_eq!(p("RunLoadTest"), Some(Role::Operator));
        assert_eq!(p("OptimizePools"), Some(Role::Operator));
        assert_eq!(p("CreatePool"), Some(Role::Admin));
        assert_eq!(p("DeletePool"), Some(Role::Admin));
        assert_eq!(p("SomethingNew"), Some(Role::Admin));
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(required_role("/other.Service/Get"), Some(Role::Admin));
    }
}
