//! Digest authentication (RFC 3261 §22, RFC 2617/7616) of a request the peer challenged with
//! 401 (WWW-Authenticate) or 407 (Proxy-Authenticate); rsip computes the hashes.

use rsip::headers::auth::{AuthQop, Qop};
use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::services::DigestGenerator;

#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("the peer asks for authentication but no --user/--password was given")]
    NoCredentials,
    #[error("the peer's {code} has no usable challenge: {reason}")]
    BadChallenge { code: u16, reason: String },
}

/// The Authorization (401) or Proxy-Authorization (407) header answering `challenge`.
pub fn authorize(
    challenge: &rsip::Response,
    request: &rsip::Request,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<rsip::Header, DigestError> {
    let (Some(user), Some(password)) = (user, password) else {
        return Err(DigestError::NoCredentials);
    };
    let code = challenge.status_code.code();
    let bad = |reason: String| DigestError::BadChallenge { code, reason };
    let value = challenge
        .headers
        .iter()
        .find_map(|h| match (h, code) {
            (rsip::Header::WwwAuthenticate(w), 401) => Some(w.value().to_string()),
            (rsip::Header::ProxyAuthenticate(p), 407) => Some(p.value().to_string()),
            _ => None,
        })
        .ok_or_else(|| bad("no WWW-Authenticate/Proxy-Authenticate header".into()))?;
    let www = rsip::headers::WwwAuthenticate::new(value)
        .typed()
        .map_err(|e| bad(e.to_string()))?;
    let qop = www.qop.as_ref().map(|q| match q {
        Qop::Auth => AuthQop::Auth {
            cnonce: format!("{:08x}", rand::random::<u32>()),
            nc: 1,
        },
        Qop::AuthInt => AuthQop::AuthInt {
            cnonce: format!("{:08x}", rand::random::<u32>()),
            nc: 1,
        },
    });
    let algorithm = www.algorithm.unwrap_or(rsip::headers::auth::Algorithm::Md5);
    let response = DigestGenerator {
        username: user,
        password,
        nonce: &www.nonce,
        uri: &request.uri,
        realm: &www.realm,
        method: &request.method,
        qop: qop.as_ref(),
        algorithm,
    }
    .compute();
    let authorization = rsip::typed::Authorization {
        scheme: rsip::headers::auth::Scheme::Digest,
        username: user.to_string(),
        realm: www.realm.clone(),
        nonce: www.nonce.clone(),
        uri: request.uri.clone(),
        response,
        algorithm: www.algorithm,
        opaque: www.opaque.clone(),
        qop,
    };
    Ok(if code == 407 {
        rsip::headers::ProxyAuthorization::new(authorization.to_string()).into()
    } else {
        rsip::headers::Authorization::from(authorization).into()
    })
}
